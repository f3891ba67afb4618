// The C++ end of benchmarks/bench_cpp.py. Every command attaches to a heap the Python side
// created, on channels "ping" (towards the echo side) and "pong" (back).
//   bench_peer echo HEAP            recv on ping, send the bytes back on pong, until EOF
//   bench_peer ping HEAP N SIZE     N round trips of SIZE bytes; prints "ns_per_rt <x>"
//   bench_peer frames-send HEAP N FILL   N 1080p uint8 frames as moved blocks on "frames";
//                                   FILL=1 writes every byte of each frame (a real camera)
//   bench_peer frames-recv HEAP N   receives N frames; prints "fps <x>"
#include <shmipc/shmipc.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace std::chrono;

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    std::string cmd = argv[1];
    auto heap = shmipc::Heap::attach(argv[2]);
    const auto wait = seconds(60);
    try {
        if (cmd == "echo") {
            auto in = heap.channel("ping");
            auto out = heap.channel("pong");
            try {
                for (;;) {
                    shmipc::Block b = in.recv(wait);
                    out.send(std::span<const std::byte>(b.bytes()), wait);
                }
            } catch (const shmipc::EndOfStream &) {
            }
            out.close();
            return 0;
        }
        if (cmd == "ping") {
            long n = std::stol(argv[3]);
            std::vector<std::byte> msg(std::stoul(argv[4]), std::byte{1});
            auto out = heap.channel("ping");
            auto in = heap.channel("pong");
            for (int i = 0; i < 1000; ++i) { // warm up
                out.send(std::span<const std::byte>(msg), wait);
                (void)in.recv(wait);
            }
            auto t0 = steady_clock::now();
            for (long i = 0; i < n; ++i) {
                out.send(std::span<const std::byte>(msg), wait);
                (void)in.recv(wait);
            }
            auto dt = duration<double, std::nano>(steady_clock::now() - t0).count();
            out.close();
            std::printf("ns_per_rt %.1f\n", dt / static_cast<double>(n));
            return 0;
        }
        if (cmd == "frames-send") {
            long n = std::stol(argv[3]);
            bool fill = argc > 4 && std::string(argv[4]) == "1";
            auto ch = heap.channel("frames");
            const auto info = shmipc::array_info<std::uint8_t>({1080, 1920, 3});
            for (long i = 0; i < n; ++i) {
                shmipc::Block f = heap.allocate(info.nbytes());
                auto b = f.bytes();
                if (fill)
                    std::memset(b.data(), static_cast<int>(i & 0xff), b.size());
                else
                    b[0] = static_cast<std::byte>(i & 0xff);
                ch.send_array(std::move(f), info, wait);
            }
            ch.close();
            return 0;
        }
        if (cmd == "frames-recv") {
            long n = std::stol(argv[3]);
            auto ch = heap.channel("frames");
            auto t0 = steady_clock::now();
            for (long i = 0; i < n; ++i) {
                shmipc::ArrayBlock a = ch.recv_array(wait);
                if (a.bytes()[0] != static_cast<std::byte>(i & 0xff))
                    return 4;
                if (i == 0)
                    t0 = steady_clock::now(); // from the first frame: start-up excluded
            }
            double s = duration<double>(steady_clock::now() - t0).count();
            std::printf("fps %.1f\n", static_cast<double>(n - 1) / s);
            return 0;
        }
    } catch (const shmipc::Error &e) {
        std::fprintf(stderr, "bench_peer %s: %s\n", cmd.c_str(), e.what());
        return 3;
    }
    return 2;
}
