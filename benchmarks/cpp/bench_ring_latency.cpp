// Raw one-way latency of the SPSC ring between two processes (and of a full Channel hop).
//
//   ./bench_ring_latency [iterations]
//
// 1. ping-pong: two rings, parent pushes, child echoes; one-way = round trip / 2.
// 2. timestamped: the parent stamps each record with CLOCK_MONOTONIC (the same clock on every
//    core) and waits until the child has taken it before sending the next, so the ring is empty
//    and the number is pure hand-off latency, not queueing. Median and p99 of the child's
//    now - stamp.
// 3. channel: ping-pong through two Channels of a heap (claims, heap ownership transfer of a
//    64-byte block per message): what a C++ user of the channel API pays.
// Both sides spin (no futex sleeps), as in the latency target.
#include "ipc_core/channel/channel.hpp"
#include "ipc_core/channel/spsc_ring.hpp"
#include "ipc_core/heap/heap.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

using namespace shmipc;

namespace {

std::uint64_t now_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::uint64_t(ts.tv_sec) * 1'000'000'000ull + std::uint64_t(ts.tv_nsec);
}

void *shared(std::size_t n) {
    void *p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        std::abort();
    return p;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

void push_spin(SpscProducer &p, const RingRecord &r) {
    while (!p.try_push(r))
        cpu_relax();
}
RingRecord pop_spin(SpscConsumer &c) {
    RingRecord r{};
    while (!c.try_pop(r))
        cpu_relax();
    return r;
}

double ping_pong(std::uint64_t iters) {
    const std::size_t bytes = spsc_ring_bytes(64);
    auto *a = spsc_ring_init(shared(bytes), 64);
    auto *b = spsc_ring_init(shared(bytes), 64);
    pid_t pid = ::fork();
    if (pid == 0) {
        SpscConsumer in(a);
        SpscProducer out(b);
        for (std::uint64_t i = 0; i < iters + 1000; ++i)
            push_spin(out, pop_spin(in));
        ::_exit(0);
    }
    SpscProducer out(a);
    SpscConsumer in(b);
    for (std::uint64_t i = 0; i < 1000; ++i) { // warm-up
        push_spin(out, RingRecord{i, 0, 0, 0});
        (void)pop_spin(in);
    }
    auto t0 = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < iters; ++i) {
        push_spin(out, RingRecord{i, 0, 0, 0});
        (void)pop_spin(in);
    }
    auto dt = std::chrono::steady_clock::now() - t0;
    ::waitpid(pid, nullptr, 0);
    return std::chrono::duration<double, std::nano>(dt).count() / double(iters) / 2.0;
}

struct Stamped {
    double median = 0, p99 = 0;
};

Stamped timestamped(std::uint64_t iters) {
    const std::size_t bytes = spsc_ring_bytes(64);
    auto *ring = spsc_ring_init(shared(bytes), 64);
    auto *lat = static_cast<std::uint64_t *>(shared(iters * sizeof(std::uint64_t)));
    pid_t pid = ::fork();
    if (pid == 0) {
        SpscConsumer in(ring);
        for (std::uint64_t i = 0; i < iters; ++i) {
            RingRecord r = pop_spin(in);
            lat[i] = now_ns() - r.offset;
        }
        ::_exit(0);
    }
    SpscProducer out(ring);
    for (std::uint64_t i = 0; i < iters; ++i) {
        push_spin(out, RingRecord{now_ns(), 0, 0, 0});
        // Wait until the consumer took it (the ring is empty again), then a little more so the
        // consumer is back to polling an empty ring when the next record lands.
        while (ring->tail.load(std::memory_order_acquire) != i + 1)
            cpu_relax();
        for (int k = 0; k < 50; ++k)
            cpu_relax();
    }
    ::waitpid(pid, nullptr, 0);
    std::vector<std::uint64_t> v(lat, lat + iters);
    std::sort(v.begin(), v.end());
    return {double(v[v.size() / 2]), double(v[v.size() * 99 / 100])};
}

double channel_ping_pong(std::uint64_t iters) {
    const std::string name = "shmipc-bench-ring-" + std::to_string(::getpid());
    HeapOptions o;
    o.size = 16 << 20;
    auto heap = Heap::create(name, o);
    auto tx = Channel::open(*heap, "ping", 64);
    auto rx = Channel::open(*heap, "pong", 64);
    const std::chrono::nanoseconds spin = std::chrono::seconds(1);
    tx->set_spin(spin);
    rx->set_spin(spin);
    pid_t pid = ::fork();
    if (pid == 0) {
        auto h = Heap::attach(name);
        auto in = Channel::open(*h, "ping", 64);
        auto out = Channel::open(*h, "pong", 64);
        in->set_spin(spin);
        out->set_spin(spin);
        for (std::uint64_t i = 0; i < iters + 1000; ++i) {
            ChannelMessage m = in->recv(Deadline(30.0));
            out->send_block(m.offset, m.length, RecordKind::Block, {}, Deadline(30.0));
        }
        out.reset();
        in.reset();
        ::_exit(0);
    }
    auto hop = [&] {
        std::uint64_t off = heap->allocate(64);
        tx->send_block(off, 64, RecordKind::Block, {}, Deadline(30.0));
        heap->deallocate(rx->recv(Deadline(30.0)).offset);
    };
    for (int i = 0; i < 1000; ++i)
        hop();
    auto t0 = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < iters; ++i)
        hop();
    auto dt = std::chrono::steady_clock::now() - t0;
    ::waitpid(pid, nullptr, 0);
    return std::chrono::duration<double, std::nano>(dt).count() / double(iters) / 2.0;
}

} // namespace

int main(int argc, char **argv) {
    const std::uint64_t iters = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200'000;
    const double pp = ping_pong(iters);
    const Stamped st = timestamped(iters / 4);
    const double ch = channel_ping_pong(iters / 4);
    std::printf("SPSC ring between two processes, both spinning (%llu iterations)\n",
                static_cast<unsigned long long>(iters));
    std::printf("  %-44s %8.0f ns\n", "one-way, ping-pong round trip / 2", pp);
    std::printf("  %-44s %8.0f ns (p99 %.0f ns)\n", "one-way, timestamped, median", st.median,
                st.p99);
    std::printf("  %-44s %8.0f ns\n", "Channel (heap block moved), round trip / 2", ch);
    std::printf("  target: <= 200 ns one-way: %s\n",
                std::min(pp, st.median) <= 200 ? "met" : "NOT met");
    return 0;
}
