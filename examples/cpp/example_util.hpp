// Small helpers shared by the examples (not part of shmipc): retry until the peer has created
// the object, and Unix socket set-up for the Buffer examples.
#pragma once

#include <shmipc/shmipc.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

namespace example {

// Calls f() until it stops throwing "no such object" (the consumer creates it), for 10 s.
template <class F> auto retry(F f) {
    for (int i = 0;; ++i) {
        try {
            return f();
        } catch (const shmipc::OsError &e) {
            if ((e.err() != ENOENT && e.err() != ECONNREFUSED) || i == 200)
                throw;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
}

inline sockaddr_un address(const std::string &path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    return a;
}

inline int connect_unix(const std::string &path) {
    return retry([&] {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a = address(path);
        if (::connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0) {
            int err = errno;
            ::close(fd);
            throw shmipc::OsError(err == ENOENT ? ENOENT : err, "connect " + path);
        }
        return fd;
    });
}

// Listens on `path` and accepts one connection.
inline int accept_one(const std::string &path) {
    int srv = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = address(path);
    ::unlink(path.c_str());
    if (::bind(srv, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0 || ::listen(srv, 1) != 0)
        throw shmipc::OsError(errno, "listen " + path);
    int fd = ::accept4(srv, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(srv);
    ::unlink(path.c_str());
    if (fd < 0)
        throw shmipc::OsError(errno, "accept");
    return fd;
}

} // namespace example
