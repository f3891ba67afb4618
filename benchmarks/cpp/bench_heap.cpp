// C++ cost of one allocate + deallocate pair on a shared heap (no Python).
//   build-cpp-plain/bench_heap      (built by dev/ctest)
#include "ipc_core/heap/heap.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>

int main() {
    using namespace shmipc;
    for (bool cache : {true, false}) {
        HeapOptions o;
        o.size = 64 << 20;
        o.thread_cache = cache;
        auto h = Heap::anonymous(o);
        for (std::size_t size : {64, 4096, 65536}) {
            constexpr int kN = 2'000'000;
            double best = 1e9;
            for (int r = 0; r < 5; ++r) {
                auto t0 = std::chrono::steady_clock::now();
                for (int i = 0; i < kN; ++i)
                    h->deallocate(h->allocate(size));
                double ns =
                    std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0)
                        .count() /
                    kN;
                best = ns < best ? ns : best;
            }
            std::printf("%-9s %6zu B: %6.1f ns per allocate+deallocate (best of 5)\n",
                        cache ? "cache" : "no cache", size, best);
        }
        // What a channel message costs the heap: the sender hands the block to the heap
        // (transfer to kOwnerHeld), the receiver takes it (try_transfer), then frees it.
        constexpr int kN = 2'000'000;
        double best = 1e9;
        for (int r = 0; r < 5; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < kN; ++i) {
                const std::uint64_t off = h->allocate(64);
                h->transfer(off, kOwnerHeld);
                if (!h->try_transfer(off, kOwnerHeld, h->client_id()))
                    std::abort();
                h->deallocate(off);
            }
            double ns =
                std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0)
                    .count() /
                kN;
            best = ns < best ? ns : best;
        }
        std::printf(
            "%-9s  handoff 64 B: %6.1f ns per allocate+transfer+take+deallocate (best of 5)\n",
            cache ? "cache" : "no cache", best);
    }
}
