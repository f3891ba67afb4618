#include "ipc_core/buffer/fd_passing.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <system_error>
#include <unistd.h>
#include <vector>

namespace shmipc {

namespace {

int socket_type(int sock) {
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
        if (errno == ENOTSOCK)
            throw InvalidArgument("not a socket");
        throw_errno("getsockopt(SO_TYPE)");
    }
    return type;
}

void check_unix(int sock) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(sock, reinterpret_cast<sockaddr *>(&ss), &len) != 0)
        throw_errno("getsockname");
    if (ss.ss_family != AF_UNIX)
        throw InvalidArgument("fd passing needs an AF_UNIX socket");
}

std::atomic<void (*)()> g_fd_pressure_hook{nullptr};

// Receiving an fd needs a free descriptor slot: at the fd limit the kernel drops the fd
// (MSG_CTRUNC) after we consumed the message's bytes, and the message is lost. So check that
// there is room for every fd a message may carry first (dups of `sock`, closed again at once);
// if not, let the buffer pool give back its idle fds and look again. Without room: EMFILE, and
// the message stays queued. (Another thread can still take the room in between; best effort.)
void ensure_fd_room(int sock) {
    for (int attempt = 0; attempt < 2; ++attempt) {
        int got[kMaxFdsAccepted];
        int n = 0;
        for (; n < kMaxFdsAccepted; ++n) {
            got[n] = ::fcntl(sock, F_DUPFD_CLOEXEC, 0);
            if (got[n] < 0)
                break;
        }
        int err = errno;
        for (int i = 0; i < n; ++i)
            ::close(got[i]);
        if (n == kMaxFdsAccepted)
            return;
        if (err != EMFILE && err != ENFILE)
            throw_errno(err, "fcntl(F_DUPFD_CLOEXEC)");
        // SYNC POINT: acquire, pairs with the release store in set_fd_pressure_hook.
        if (auto hook = g_fd_pressure_hook.load(std::memory_order_acquire); hook && attempt == 0)
            hook();
        else
            break;
    }
    throw OsError(EMFILE, "no free file descriptor to receive a buffer into (the message stays "
                          "queued; close some files, or raise RLIMIT_NOFILE)");
}

// The first bytes of a stream message are the wire header: bytes that cannot start one are
// garbage at once, not a reason to wait for the rest.
void check_header_prefix(const char *p, std::size_t n) {
    const std::uint32_t magic = kWireMagic;
    const std::uint16_t version = kWireVersion;
    char expect[6];
    std::memcpy(expect, &magic, 4);
    std::memcpy(expect + 4, &version, 2);
    if (std::memcmp(p, expect, std::min<std::size_t>(n, sizeof expect)) != 0)
        throw CorruptSegment("not a shmipc message (bad magic)");
}

} // namespace

void set_fd_pressure_hook(void (*hook)()) noexcept {
    // SYNC POINT: release, pairs with the acquire load before a hook is called.
    g_fd_pressure_hook.store(hook, std::memory_order_release);
}

void wait_fd(int fd, bool for_write, const Deadline &deadline) {
    for (;;) {
        pollfd p{fd, static_cast<short>(for_write ? POLLOUT : POLLIN), 0};
        auto slice = deadline.slice();
        int ms =
            static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(slice).count());
        if (slice.count() > 0 && ms == 0)
            ms = 1;
        int r = ::poll(&p, 1, ms);
        if (r > 0)
            return; // readable, writable, HUP or ERR: the next call tells which
        if (r < 0 && errno != EINTR)
            throw_errno("poll");
        check_interrupt();
        if (deadline.expired())
            throw Timeout("timed out");
    }
}

void send_fd_message(int sock, int memfd, std::uint64_t nbytes, std::string_view meta,
                     std::string_view desc) {
    if (meta.size() > kMaxMetaBytes)
        throw InvalidArgument("meta is larger than 64 KiB");
    if (desc.size() > kMaxDescBytes)
        throw InvalidArgument("array descriptor too large");
    int type = socket_type(sock);
    check_unix(sock);
    WireHeader h{kWireMagic,
                 kWireVersion,
                 0,
                 nbytes,
                 static_cast<std::uint32_t>(meta.size()),
                 static_cast<std::uint32_t>(desc.size()),
                 0};
    iovec iov[3] = {{&h, sizeof h},
                    {const_cast<char *>(meta.data()), meta.size()},
                    {const_cast<char *>(desc.data()), desc.size()}};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = 3;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof ctrl;
    cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &memfd, sizeof memfd);

    std::size_t total = sizeof h + meta.size() + desc.size();
    std::size_t sent = 0;
    Deadline forever = Deadline::never();
    while (sent < total) {
        ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                wait_fd(sock, true, forever);
                continue;
            }
            if (errno == EPIPE || errno == ECONNRESET)
                throw OsError(errno, "send: peer closed the socket");
            throw_errno("sendmsg");
        }
        sent += static_cast<std::size_t>(n);
        if (type != SOCK_STREAM)
            break; // datagrams go whole or not at all
        // Stream: continue with what is left, the fd already went with the first byte.
        msg.msg_control = nullptr;
        msg.msg_controllen = 0;
        std::size_t skip = static_cast<std::size_t>(n);
        std::size_t i = 0;
        while (i < msg.msg_iovlen && skip >= iov[i].iov_len)
            skip -= iov[i++].iov_len;
        msg.msg_iov = iov + i;
        msg.msg_iovlen -= i;
        if (msg.msg_iovlen) {
            iov[i].iov_base = static_cast<char *>(iov[i].iov_base) + skip;
            iov[i].iov_len -= skip;
        }
    }
}

namespace {

// Takes ownership of every fd in the control data before anything else can fail.
std::vector<UniqueFd> take_fds(msghdr &msg) {
    std::vector<UniqueFd> fds;
    for (cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < n; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                fds.emplace_back(fd);
            }
        }
    }
    return fds;
}

void read_exact_stream(int sock, char *p, std::size_t n, const Deadline &deadline) {
    while (n) {
        ssize_t r = ::recv(sock, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= static_cast<std::size_t>(r);
            continue;
        }
        if (r == 0)
            throw CorruptSegment("truncated message: peer closed mid-message");
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            wait_fd(sock, false, deadline);
            continue;
        }
        throw_errno("recv");
    }
}

} // namespace

FdMessage recv_fd_message(int sock, const Deadline &deadline) {
    int type = socket_type(sock);
    check_unix(sock); // a TCP socket: refused before a byte is consumed
    const bool stream = type == SOCK_STREAM;
    std::vector<char> data(stream ? sizeof(WireHeader)
                                  : sizeof(WireHeader) + kMaxMetaBytes + kMaxDescBytes + 1);
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFdsAccepted)];
    ssize_t n;
    std::vector<UniqueFd> fds;
    int flags_out = 0;
    for (;;) {
        iovec iov{data.data(), data.size()};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl;
        msg.msg_controllen = sizeof ctrl;
        ensure_fd_room(sock);
        n = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n >= 0) {
            fds = take_fds(msg);
            flags_out = msg.msg_flags;
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (deadline.expired())
                throw Timeout("timed out waiting for a buffer");
            wait_fd(sock, false, deadline);
            continue;
        }
        if (errno == ECONNRESET)
            throw EndOfStream("peer closed the socket");
        throw_errno("recvmsg");
    }
    if (n == 0 && fds.empty()) {
        if (stream || type == SOCK_SEQPACKET)
            throw EndOfStream("peer closed the socket");
        throw CorruptSegment("empty datagram");
    }
    if (flags_out & MSG_CTRUNC)
        throw CorruptSegment("control data truncated (MSG_CTRUNC): too many fds");
    if (!stream && (flags_out & MSG_TRUNC))
        throw CorruptSegment("message too large");
    if (fds.size() != 1)
        throw CorruptSegment(fds.empty() ? "message carries no fd"
                                         : "message carries " + std::to_string(fds.size()) +
                                               " fds, expected 1");
    if (stream && static_cast<std::size_t>(n) < sizeof(WireHeader)) {
        check_header_prefix(data.data(), static_cast<std::size_t>(n));
        read_exact_stream(sock, data.data() + n, sizeof(WireHeader) - static_cast<std::size_t>(n),
                          deadline);
    } else if (!stream && static_cast<std::size_t>(n) < sizeof(WireHeader))
        throw CorruptSegment("short message");

    WireHeader h{};
    std::memcpy(&h, data.data(), sizeof h);
    if (h.magic != kWireMagic)
        throw CorruptSegment("not a shmipc message (bad magic)");
    if (h.version != kWireVersion)
        throw CorruptSegment("unsupported shmipc message version");
    if (h.meta_len > kMaxMetaBytes || h.desc_len > kMaxDescBytes)
        throw CorruptSegment("message lengths out of range");
    std::size_t body = std::size_t{h.meta_len} + h.desc_len;
    FdMessage out;
    if (stream) {
        out.meta.resize(h.meta_len);
        out.desc.resize(h.desc_len);
        read_exact_stream(sock, out.meta.data(), h.meta_len, deadline);
        read_exact_stream(sock, out.desc.data(), h.desc_len, deadline);
    } else {
        if (static_cast<std::size_t>(n) != sizeof h + body)
            throw CorruptSegment("message length mismatch");
        out.meta.assign(data.data() + sizeof h, h.meta_len);
        out.desc.assign(data.data() + sizeof h + h.meta_len, h.desc_len);
    }

    // The fd must be a memfd sealed against shrinking and at least as large as announced:
    // then mapping it can never SIGBUS, whatever the sender does later.
    UniqueFd fd = std::move(fds[0]);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    if (!S_ISREG(st.st_mode))
        throw CorruptSegment("received fd is not a memory file");
    int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (seals < 0)
        throw CorruptSegment("received fd is not a sealable memfd");
    if (!(seals & F_SEAL_SHRINK))
        throw CorruptSegment("received memfd is not sealed against shrinking");
    if (static_cast<std::uint64_t>(st.st_size) < h.nbytes)
        throw CorruptSegment("received memfd is smaller (" + std::to_string(st.st_size) +
                             " bytes) than announced (" + std::to_string(h.nbytes) + ")");
    out.fd = std::move(fd);
    out.nbytes = h.nbytes;
    out.file_size = static_cast<std::uint64_t>(st.st_size);
    out.write_sealed = (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) != 0;
    return out;
}

} // namespace shmipc
