// Python -> C++: receives NumPy arrays sent by channel_producer.py.
// Run: ./channel_consumer & python examples/cpp/channel_producer.py
#include <shmipc/shmipc.hpp>

#include <chrono>
#include <cstdio>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example_arrays";
    auto heap = shmipc::Heap::create(name, {.size = 64 << 20});
    auto ch = heap.channel("samples");
    double total = 0;
    int n = 0;
    try {
        for (;;) {
            shmipc::ArrayBlock a = ch.recv_array(std::chrono::seconds(30));
            for (double x : a.as<double>()) // dtype checked: float64 from Python
                total += x;
            ++n;
        }
    } catch (const shmipc::EndOfStream &) { // Python closed the channel
    }
    std::printf("consumer: %d arrays, total %.1f\n", n, total);
}
