// C++ -> Python: a memfd Buffer moved over a Unix socket (Python: shmipc.recv_array(sock)).
// Run: python examples/cpp/buffer_receiver.py & ./buffer_sender
#include "example_util.hpp"

#include <cstdio>

int main(int argc, char **argv) {
    std::string path = argc > 1 ? argv[1] : "/tmp/shmipc-example.sock";
    int sock = example::connect_unix(path);
    const auto info = shmipc::array_info<float>({480, 640});
    shmipc::Buffer buf(info.nbytes());
    auto px = buf.writable_bytes();
    auto *f = reinterpret_cast<float *>(px.data());
    for (std::size_t i = 0; i < info.size(); ++i)
        f[i] = static_cast<float>(i % 640);
    shmipc::send_array(sock, buf, info, shmipc::Meta::json(R"({"camera": 0})"));
    ::close(sock); // buf is read-only here now: its bytes moved to the receiver
    std::puts("sender: sent a 480x640 float32 image");
}
