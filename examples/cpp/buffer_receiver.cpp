// Python -> C++: receives a Buffer with its metadata from buffer_sender.py.
// Run: ./buffer_receiver & python examples/cpp/buffer_sender.py
#include "example_util.hpp"

#include <iostream>

int main(int argc, char **argv) {
    std::string path = argc > 1 ? argv[1] : "/tmp/shmipc-example-py.sock";
    int sock = example::accept_one(path);
    shmipc::Buffer buf = shmipc::recv(sock, std::chrono::seconds(30)); // writable: ours now
    std::cout << "receiver: " << buf.nbytes() << " bytes, meta " << buf.meta().data << "\n";
    shmipc::ArrayBuffer arr = shmipc::recv_array(sock, std::chrono::seconds(30));
    auto v = arr.as<std::int64_t>();
    std::cout << "receiver: int64 array of " << v.size() << ", last " << v.back() << "\n";
    ::close(sock);
}
