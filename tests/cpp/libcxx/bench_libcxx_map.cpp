// What a shared heap costs std::map / std::set under libc++: insert, find and erase of N ints
// with std::allocator (private memory) and with shmipc::allocator (nodes in a Heap, linked by
// offset_ptr), plus shmipc::flat_map for comparison. Built by the libc++ sub-build
// (tests/cpp/libcxx/CMakeLists.txt) as bench_libcxx_map; run: <build>/libcxx-tests/bench_libcxx_map
// [N]
#include "ipc_core/containers/stl_allocator.hpp"
#include "ipc_core/heap/heap.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <vector>

using namespace shmipc;
using Clock = std::chrono::steady_clock;

namespace {

template <class F> double ns_per_op(std::size_t n, F &&f) {
    auto t0 = Clock::now();
    f();
    return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / double(n);
}

// Best of 5 rounds (the machine is shared: the minimum is the least disturbed round).
template <class M> void run(const char *label, M &m, const std::vector<int> &keys) {
    std::size_t n = keys.size();
    double ins = 1e18, fnd = 1e18, ers = 1e18;
    long sum = 0;
    for (int round = 0; round < 5; ++round) {
        ins = std::min(ins, ns_per_op(n, [&] {
                           for (int k : keys)
                               m.try_emplace(k, k);
                       }));
        fnd = std::min(fnd, ns_per_op(n, [&] {
                           for (int k : keys)
                               sum += m.find(k)->second;
                       }));
        ers = std::min(ers, ns_per_op(n, [&] {
                           for (int k : keys)
                               m.erase(k);
                       }));
    }
    // `sum` is printed so the lookups are not optimized away.
    std::printf("| %-34s | %8.0f | %8.0f | %8.0f | (checksum %ld)\n", label, ins, fnd, ers, sum);
}

} // namespace

int main(int argc, char **argv) {
    std::size_t n = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 100000;
    std::vector<int> keys(n);
    for (std::size_t i = 0; i < n; ++i)
        keys[i] = int(i);
    std::shuffle(keys.begin(), keys.end(), std::mt19937(42));
    HeapOptions o;
    o.size = std::max<std::size_t>(64 << 20, n * 256);
    auto h = Heap::anonymous(o);
    HeapRegistration reg(*h);
    std::printf("N = %zu random int keys; ns per operation (libc++, clang++ %d)\n\n", n,
                __clang_major__);
    std::printf(
        "| container                          |   insert |     find |    erase |\n"); // best of 5
    std::printf("|------------------------------------|----------|----------|----------|\n");
    {
        std::map<int, int> m;
        run("std::map, std::allocator", m, keys);
    }
    {
        using M = std::map<int, int, std::less<int>, allocator<std::pair<const int, int>>>;
        M m{M::allocator_type(*h)};
        run("std::map, shmipc::allocator", m, keys);
    }
    {
        flat_map<int, int> m{flat_map<int, int>::allocator_type(*h)};
        // flat_map insertion is O(n): keep it to a size where it finishes quickly.
        std::vector<int> few(keys.begin(), keys.begin() + std::min<std::size_t>(n, 20000));
        run("shmipc::flat_map (N <= 20000)", m, few);
    }
    return 0;
}
