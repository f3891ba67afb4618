// C++ camera -> Python: 1080p frames over a heap channel, zero copy.
// Run: python examples/cpp/channel_consumer.py & ./channel_producer
#include "example_util.hpp"

#include <cstdio>
#include <cstring>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example_frames";
    auto heap = example::retry([&] { return shmipc::Heap::attach(name); }); // Python made it
    auto ch = heap.channel("camera0");
    const auto info = shmipc::array_info<std::uint8_t>({1080, 1920, 3});
    for (int i = 0; i < 10; ++i) {
        shmipc::Block frame = heap.allocate(info.nbytes());   // in shared memory
        std::memset(frame.bytes().data(), i, frame.nbytes()); // "capture" into it
        ch.send_array(std::move(frame), info);                // Python: ch.recv_array()
    }
    ch.close(); // end of stream: the consumer's loop ends
    std::puts("producer: sent 10 frames");
}
