// The C++ end of every cross-language exchange of tests/python/test_cpp_api.py. Each command
// talks to objects a Python process made (or makes one for Python), prints what it received
// as lines on stdout, and exits 0; any shmipc::Error is printed as "error <type>: <what>" with
// exit status 3 so the Python side can assert on it.
//
//   shmipc_peer channel-send HEAP CHANNEL N        N byte records "msg-i", one float32 (2, 3)
//                                                  array, one moved 1 KiB block of 0xAB; close
//   shmipc_peer channel-recv HEAP CHANNEL          prints each record until the end of stream
//   shmipc_peer channel-send-and-hang HEAP CH N    N records, "ready", then sleeps (to be killed)
//   shmipc_peer channel-wait HEAP CHANNEL          receives until PeerDied / EndOfStream
//   shmipc_peer value-write NAME bytes|text|array  one write to an existing value
//   shmipc_peer value-read NAME                    prints the value's kind and contents
//   shmipc_peer value-create NAME                  creates a value, writes text, waits for
//                                                  Python's write (version 2) and prints it
//   shmipc_peer queue-put NAME N / queue-get NAME N
//   shmipc_peer queue-create NAME N                creates a queue, "ready", gets N, prints
//   shmipc_peer heap-create HEAP CHANNEL N         creates heap + channel, "ready", sends N
//                                                  records, waits until they are taken, closes
//   shmipc_peer buffer-send SOCKPATH / buffer-recv SOCKPATH
//   shmipc_peer stream-write NAME TEXT / stream-read NAME
#include <shmipc/shmipc.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <numeric>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr std::chrono::seconds kWait{20}; // every wait is bounded

std::string join(const std::vector<std::int64_t> &v) {
    std::string s;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (i)
            s += ',';
        s += std::to_string(v[i]);
    }
    return s;
}

template <class T> std::string join_values(std::span<const T> v) {
    std::string s;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (i)
            s += ',';
        s += std::to_string(v[i]);
    }
    return s;
}

std::string error_name(const shmipc::Error &e) {
    if (dynamic_cast<const shmipc::PeerDied *>(&e))
        return "PeerDied";
    if (dynamic_cast<const shmipc::EndOfStream *>(&e))
        return "EndOfStream";
    if (dynamic_cast<const shmipc::Timeout *>(&e))
        return "Timeout";
    if (dynamic_cast<const shmipc::CorruptSegment *>(&e))
        return "CorruptSegment";
    if (dynamic_cast<const shmipc::ChannelBusy *>(&e))
        return "ChannelBusy";
    if (dynamic_cast<const shmipc::InvalidArgument *>(&e))
        return "InvalidArgument";
    if (auto *os = dynamic_cast<const shmipc::OsError *>(&e))
        return "OsError(" + std::to_string(os->err()) + ")";
    return "Error";
}

std::string text_of(std::span<const std::byte> b) {
    return {reinterpret_cast<const char *>(b.data()), b.size()};
}

void print_array(const shmipc::ArrayInfo &info, std::span<const std::byte> bytes) {
    std::cout << "array " << info.dtype << " " << join(info.shape) << " "
              << (info.fortran ? "F" : "C") << " ";
    if (info.dtype == shmipc::dtype_of<float>())
        std::cout << join_values(shmipc::array_cast<float>(bytes, info));
    else if (info.dtype == shmipc::dtype_of<double>())
        std::cout << join_values(shmipc::array_cast<double>(bytes, info));
    else if (info.dtype == shmipc::dtype_of<std::int32_t>())
        std::cout << join_values(shmipc::array_cast<std::int32_t>(bytes, info));
    else if (info.dtype == shmipc::dtype_of<std::uint16_t>())
        std::cout << join_values(shmipc::array_cast<std::uint16_t>(bytes, info));
    else if (info.dtype == shmipc::dtype_of<std::uint8_t>())
        std::cout << "sum=" << [&] {
            unsigned long s = 0;
            for (auto b : bytes)
                s += std::to_integer<unsigned>(b);
            return s;
        }();
    else
        std::cout << "nbytes=" << bytes.size();
    std::cout << "\n";
}

int connect_unix(const std::string &path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        throw shmipc::OsError(errno, "socket");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0)
        throw shmipc::OsError(errno, "connect " + path);
    return fd;
}

int run(const std::vector<std::string> &a) {
    const std::string &cmd = a.at(1);
    if (cmd == "channel-send" || cmd == "channel-send-and-hang") {
        auto heap = shmipc::Heap::attach(a.at(2));
        auto ch = heap.channel(a.at(3));
        int n = std::stoi(a.at(4));
        for (int i = 0; i < n; ++i)
            ch.send("msg-" + std::to_string(i), kWait);
        if (cmd == "channel-send-and-hang") {
            std::cout << "ready" << std::endl;
            std::this_thread::sleep_for(60s); // killed by the test long before
            return 1;
        }
        std::vector<float> xs(6);
        std::iota(xs.begin(), xs.end(), 0.5f);
        ch.send_array(std::span<const float>(xs), {2, 3}, kWait);
        shmipc::Block blk = heap.allocate(1024);
        std::memset(blk.bytes().data(), 0xAB, blk.nbytes());
        ch.send(std::move(blk), kWait); // zero copy: the block moves to the receiver
        ch.close();                     // end of stream: Python's receiver gets EOFError
        std::cout << "sent " << n + 2 << std::endl;
        return 0;
    }
    if (cmd == "channel-recv" || cmd == "channel-wait") {
        auto heap = shmipc::Heap::attach(a.at(2));
        auto ch = heap.channel(a.at(3));
        for (;;) {
            try {
                shmipc::ArrayBlock r = ch.recv_array(kWait);
                if (r.info.dtype == "|u1" && r.info.shape.size() == 1)
                    std::cout << "bytes " << text_of(r.bytes()) << "\n";
                else
                    print_array(r.info, r.bytes());
            } catch (const shmipc::EndOfStream &) {
                std::cout << "eof" << std::endl;
                return 0;
            } catch (const shmipc::PeerDied &) {
                std::cout << "peer-died" << std::endl;
                return 0;
            }
        }
    }
    if (cmd == "topic-publish") {
        // Publishes n samples once `want` subscribers are there: bytes, an array, a block.
        auto heap = shmipc::Heap::attach(a.at(2));
        auto pub = shmipc::Publisher::open(heap, a.at(3), {.capacity = 8, .history = 1});
        const int n = std::stoi(a.at(4));
        const std::uint32_t want = static_cast<std::uint32_t>(std::stoul(a.at(5)));
        std::cout << "ready" << std::endl;
        for (int i = 0; i < 3000 && pub.subscribers() < want; ++i)
            std::this_thread::sleep_for(10ms);
        for (int i = 0; i < n; ++i)
            pub.publish("sample-" + std::to_string(i), kWait);
        std::vector<std::int32_t> xs(6);
        std::iota(xs.begin(), xs.end(), 10);
        pub.publish_array(std::span<const std::int32_t>(xs), {3, 2}, kWait);
        shmipc::Block blk = heap.allocate(4096);
        std::memset(blk.bytes().data(), 0x5A, blk.nbytes());
        pub.publish(std::move(blk), kWait); // zero copy: every subscriber gets this block
        pub.close();
        std::cout << "published " << n + 2 << std::endl;
        return 0;
    }
    if (cmd == "topic-subscribe") {
        auto heap = shmipc::Heap::attach(a.at(2));
        auto sub = shmipc::Subscriber::open(heap, a.at(3));
        std::cout << "subscribed" << std::endl;
        for (;;) {
            try {
                shmipc::Sample s = sub.recv(kWait);
                if (s.is_array())
                    print_array(s.info(), s.bytes());
                else
                    std::cout << "bytes " << text_of(s.bytes()) << "\n";
            } catch (const shmipc::EndOfStream &) {
                std::cout << "eof" << std::endl;
                return 0;
            } catch (const shmipc::PeerDied &) {
                std::cout << "peer-died" << std::endl;
                return 0;
            }
        }
    }
    if (cmd == "heap-create") {
        auto heap = shmipc::Heap::create(a.at(2), {.size = 4 << 20});
        auto ch = heap.channel(a.at(3), 64);
        std::cout << "ready" << std::endl;
        int n = std::stoi(a.at(4));
        for (int i = 0; i < n; ++i)
            ch.send("from-cpp-" + std::to_string(i), kWait);
        ch.close();
        // The owner's close removes the name: stay until the reader says it is done (or its
        // end of our stdin closes).
        std::string line;
        while (std::getline(std::cin, line) && line != "done") {
        }
        std::cout << "closed" << std::endl;
        return 0;
    }
    if (cmd == "value-write") {
        auto v = shmipc::SharedValue::attach(a.at(2));
        const std::string &kind = a.at(3);
        std::uint64_t ver = 0;
        if (kind == "text") {
            ver = v.write_text("h\u00e9llo from C++");
        } else if (kind == "bytes") {
            const std::byte raw[] = {std::byte{0}, std::byte{1}, std::byte{0xff}};
            ver = v.write_bytes(raw);
        } else {
            std::vector<double> m = {1.5, 2.5, 3.5, 4.5, 5.5, 6.5};
            ver = v.write_array(std::span<const double>(m), {3, 2});
        }
        std::cout << "version " << ver << std::endl;
        return 0;
    }
    if (cmd == "value-read") {
        auto v = shmipc::SharedValue::attach(a.at(2));
        shmipc::Value x = v.read();
        switch (x.kind) {
        case shmipc::Value::Kind::None:
            std::cout << "none\n";
            break;
        case shmipc::Value::Kind::Bytes:
            std::cout << "bytes " << x.data.size() << " " << text_of(x.data) << "\n";
            break;
        case shmipc::Value::Kind::Text:
            std::cout << "text " << x.text() << "\n";
            break;
        case shmipc::Value::Kind::Array:
            print_array(x.array, x.data);
            break;
        }
        std::cout << "version " << x.version << std::endl;
        return 0;
    }
    if (cmd == "value-create") {
        auto v = shmipc::SharedValue::create(a.at(2), {.size = 1024});
        v.write_text("created by C++");
        std::cout << "ready" << std::endl;
        if (!v.wait(1, kWait)) {
            std::cout << "timeout" << std::endl;
            return 1;
        }
        shmipc::Value x = v.read();
        std::cout << "got " << x.text() << std::endl;
        return 0;
    }
    if (cmd == "queue-put") {
        auto q = shmipc::MessageQueue::attach(a.at(2));
        int n = std::stoi(a.at(3));
        for (int i = 0; i < n; ++i)
            q.put("job-" + std::to_string(i), kWait);
        std::cout << "put " << n << std::endl;
        return 0;
    }
    if (cmd == "queue-get" || cmd == "queue-create") {
        std::optional<shmipc::MessageQueue> q;
        if (cmd == "queue-create") {
            q.emplace(shmipc::MessageQueue::create(a.at(2), {.maxsize = 16}));
            std::cout << "ready" << std::endl;
        } else {
            q.emplace(shmipc::MessageQueue::attach(a.at(2)));
        }
        int n = std::stoi(a.at(3));
        for (int i = 0; i < n; ++i)
            std::cout << "got " << q->get_string(kWait) << "\n";
        std::cout << "done" << std::endl;
        return 0;
    }
    if (cmd == "buffer-send") {
        int sock = connect_unix(a.at(2));
        shmipc::Buffer buf(4096);
        auto w = buf.writable_bytes();
        for (std::size_t i = 0; i < w.size(); ++i)
            w[i] = static_cast<std::byte>(i % 251);
        shmipc::send(sock, buf, shmipc::Meta::json(R"({"from": "cpp", "n": 4096})"));
        std::cout << "readonly " << buf.readonly() << std::endl;
        shmipc::Buffer arr(3 * 4 * sizeof(std::uint16_t));
        auto *p = reinterpret_cast<std::uint16_t *>(arr.writable_bytes().data());
        std::iota(p, p + 12, std::uint16_t{100});
        shmipc::send_array(sock, arr, shmipc::array_info<std::uint16_t>({3, 4}),
                           shmipc::Meta::bytes("raw-meta"));
        ::close(sock);
        return 0;
    }
    if (cmd == "buffer-recv") {
        int sock = connect_unix(a.at(2));
        shmipc::Buffer b = shmipc::recv(sock, kWait);
        unsigned long sum = 0;
        for (auto x : b.bytes())
            sum += std::to_integer<unsigned>(x);
        std::cout << "buffer " << b.nbytes() << " sum=" << sum << " readonly=" << b.readonly()
                  << " meta=" << static_cast<int>(b.meta().kind) << ":" << b.meta().data << "\n";
        b.writable_bytes()[0] = std::byte{1}; // the receiver owns it: writable
        shmipc::ArrayBuffer r = shmipc::recv_array(sock, kWait);
        print_array(r.info, r.bytes());
        try {
            (void)shmipc::recv(sock, kWait);
        } catch (const shmipc::EndOfStream &) {
            std::cout << "eof" << std::endl;
        }
        ::close(sock);
        return 0;
    }
    if (cmd == "stream-write") {
        auto s = shmipc::Stream::open(a.at(2), shmipc::Stream::Mode::ReadWrite);
        s.write(a.at(3));
        std::cout << "wrote " << a.at(3).size() << std::endl;
        return 0;
    }
    if (cmd == "stream-read") {
        auto s = shmipc::Stream::open(a.at(2));
        std::cout << "read " << s.read_all() << std::endl;
        return 0;
    }
    std::cerr << "unknown command " << cmd << "\n";
    return 2;
}

} // namespace

int main(int argc, char **argv) {
    std::vector<std::string> args(argv, argv + argc);
    if (args.size() < 2) {
        std::cerr << "usage: shmipc_peer COMMAND ARGS...\n";
        return 2;
    }
    try {
        return run(args);
    } catch (const shmipc::Error &e) {
        std::cout << "error " << error_name(e) << ": " << e.what() << std::endl;
        return 3;
    }
}
