#include "ipc_core/base/errors.hpp"
#include "ipc_core/buffer/buffer.hpp"
#include "ipc_core/buffer/fd_passing.hpp"

#include <cstring>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace shmipc;

namespace {

struct SocketPair {
    int a = -1, b = -1;
    explicit SocketPair(int type = SOCK_STREAM) {
        int sv[2];
        if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0)
            throw std::runtime_error("socketpair");
        a = sv[0];
        b = sv[1];
    }
    ~SocketPair() {
        if (a >= 0)
            ::close(a);
        if (b >= 0)
            ::close(b);
    }
};

int open_fd_count() {
    int n = 0;
    for (int fd = 0; fd < 1024; ++fd)
        if (::fcntl(fd, F_GETFD) != -1)
            ++n;
    return n;
}

// Sends raw bytes with an arbitrary set of fds (to forge bad messages).
void send_raw(int sock, const void *data, std::size_t len, const int *fds, int nfds) {
    iovec iov{const_cast<void *>(data), len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * 16)] = {};
    if (nfds) {
        msg.msg_control = ctrl;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ASSERT_GE(::sendmsg(sock, &msg, 0), 0);
}

WireHeader header(std::uint64_t nbytes) {
    return WireHeader{kWireMagic, kWireVersion, 0, nbytes, 0, 0, 0};
}

} // namespace

TEST(FdPassing, received_memfd_maps_the_same_bytes_in_another_process) {
    SocketPair sp;
    auto buf = Buffer::create(1 << 20);
    std::memset(buf->data(), 0x5a, buf->nbytes());
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(sp.a);
        try {
            FdMessage m = recv_fd_message(sp.b, Deadline(5.0));
            auto got = Buffer::adopt(std::move(m.fd), m.nbytes, m.file_size, m.write_sealed);
            bool same = got->nbytes() == (1u << 20) && m.meta == "hello";
            for (std::size_t i = 0; i < got->nbytes(); i += 997)
                same = same && got->data()[i] == std::byte{0x5a};
            got->data()[0] = std::byte{1}; // writable for the receiver
            char c = same ? 'Y' : 'N';
            (void)::write(sp.b, &c, 1);
        } catch (...) {
            ::_exit(3);
        }
        ::_exit(0);
    }
    int fd = buf->prepare_send(0);
    send_fd_message(sp.a, fd, buf->nbytes(), "hello", "");
    buf->mark_sent();
    EXPECT_TRUE(buf->readonly());
    char c = 0;
    ASSERT_EQ(::read(sp.a, &c, 1), 1);
    EXPECT_EQ(c, 'Y');
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_EQ(buf->data()[0], std::byte{1}) << "the sender still sees the receiver's writes";
}

TEST(FdPassing, works_on_seqpacket_and_datagram_sockets) {
    for (int type : {SOCK_SEQPACKET, SOCK_DGRAM}) {
        SocketPair sp(type);
        auto buf = Buffer::create(100);
        send_fd_message(sp.a, buf->prepare_send(0), 100, "m", "d");
        FdMessage m = recv_fd_message(sp.b, Deadline(1.0));
        EXPECT_EQ(m.nbytes, 100u);
        EXPECT_EQ(m.meta, "m");
        EXPECT_EQ(m.desc, "d");
    }
}

TEST(FdPassing, eof_timeout_and_garbage_are_reported_and_no_fd_leaks) {
    int before = open_fd_count();
    {
        SocketPair sp;
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(0.05)), Timeout);
        ::close(sp.a);
        sp.a = -1;
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), EndOfStream);
    }
    { // header without an fd
        SocketPair sp(SOCK_SEQPACKET);
        auto h = header(10);
        send_raw(sp.a, &h, sizeof h, nullptr, 0);
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), CorruptSegment);
    }
    { // extra fds, more than we accept (MSG_CTRUNC): all closed
        SocketPair sp(SOCK_SEQPACKET);
        auto h = header(10);
        int fds[8];
        for (int &f : fds)
            f = ::memfd_create("x", MFD_CLOEXEC);
        send_raw(sp.a, &h, sizeof h, fds, 8);
        for (int f : fds)
            ::close(f);
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), CorruptSegment);
    }
    { // two fds
        SocketPair sp(SOCK_SEQPACKET);
        auto h = header(0);
        auto b1 = Buffer::create(10), b2 = Buffer::create(10);
        int fds[2] = {b1->fileno(), b2->fileno()};
        send_raw(sp.a, &h, sizeof h, fds, 2);
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), CorruptSegment);
    }
    { // a pipe is not a memfd
        SocketPair sp(SOCK_SEQPACKET);
        int p[2];
        ASSERT_EQ(::pipe(p), 0);
        auto h = header(0);
        send_raw(sp.a, &h, sizeof h, p, 1);
        ::close(p[0]);
        ::close(p[1]);
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), CorruptSegment);
    }
    { // unsealed memfd: the sender could shrink it under us
        SocketPair sp(SOCK_SEQPACKET);
        int f = ::memfd_create("x", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ASSERT_EQ(::ftruncate(f, 4096), 0);
        auto h = header(4096);
        send_raw(sp.a, &h, sizeof h, &f, 1);
        ::close(f);
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), CorruptSegment);
    }
    { // sealed but smaller than announced
        SocketPair sp(SOCK_SEQPACKET);
        auto b = Buffer::create(4096);
        auto h = header(1 << 20);
        int f = b->fileno();
        send_raw(sp.a, &h, sizeof h, &f, 1);
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), CorruptSegment);
    }
    { // wrong magic
        SocketPair sp(SOCK_SEQPACKET);
        auto b = Buffer::create(16);
        auto h = header(16);
        h.magic = 0x12345678;
        int f = b->fileno();
        send_raw(sp.a, &h, sizeof h, &f, 1);
        EXPECT_THROW((void)recv_fd_message(sp.b, Deadline(1.0)), CorruptSegment);
    }
    clear_pool();
    EXPECT_EQ(open_fd_count(), before);
}

TEST(Buffer, a_sent_buffer_is_read_only_for_the_sender_and_refuses_a_second_send) {
    SocketPair sp;
    auto b = Buffer::create(64);
    send_fd_message(sp.a, b->prepare_send(0), 64, "", "");
    b->mark_sent();
    EXPECT_TRUE(b->readonly());
    EXPECT_THROW(b->acquire_export(true), BufferBusy);
    EXPECT_THROW((void)b->prepare_send(0), BufferBusy);
}

TEST(Buffer, send_is_refused_while_a_writable_export_exists) {
    auto b = Buffer::create(64);
    b->acquire_export(true);
    EXPECT_THROW((void)b->prepare_send(0), BufferBusy);
    EXPECT_NO_THROW((void)b->prepare_send(1));
    b->release_export(true);
    EXPECT_NO_THROW((void)b->prepare_send(0));
}

TEST(Buffer, sealing_makes_the_file_immutable_for_everyone) {
    auto b = Buffer::create(4096);
    std::memset(b->data(), 3, 4096);
    b->seal();
    EXPECT_TRUE(b->sealed());
    EXPECT_TRUE(b->readonly());
    void *p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, b->fileno(), 0);
    EXPECT_EQ(p, MAP_FAILED) << "no process can map a sealed buffer writable";
    EXPECT_LT(::pwrite(b->fileno(), "x", 1, 0), 0);
}

TEST(Buffer, close_defers_unmapping_until_the_last_export_is_released) {
    auto b = Buffer::create(4096);
    b->acquire_export(false);
    std::byte *p = b->data();
    b->close();
    EXPECT_TRUE(b->closed());
    p[10] = std::byte{1}; // still mapped (ASan would flag a use after unmap as SEGV)
    EXPECT_THROW(b->acquire_export(false), Closed);
    b->release_export(false);
}

TEST(BufferPool, a_released_buffer_of_the_same_size_is_reused_without_new_faults) {
    clear_pool();
    set_pool_limit(std::size_t{1} << 30);
    std::byte *first;
    {
        auto b = Buffer::create(1 << 20);
        first = b->data();
    }
    auto before = pool_stats();
    auto b2 = Buffer::create(1 << 20);
    EXPECT_EQ(b2->data(), first);
    EXPECT_EQ(pool_stats().hits, before.hits + 1);
    EXPECT_EQ(b2->data()[123], std::byte{0}) << "a reused buffer is zero-filled again";
}

TEST(BufferPool, a_moved_buffer_is_not_reused_for_new_data_until_it_comes_back) {
    clear_pool();
    SocketPair sp;
    std::byte *first;
    {
        auto b = Buffer::create(1 << 16);
        first = b->data();
        send_fd_message(sp.a, b->prepare_send(0), b->nbytes(), "", "");
        b->mark_sent();
    }
    auto fresh = Buffer::create(1 << 16);
    EXPECT_NE(fresh->data(), first) << "the receiver owns those bytes now";
    FdMessage m = recv_fd_message(sp.b, Deadline(1.0));
    auto back = Buffer::adopt(std::move(m.fd), m.nbytes, m.file_size, m.write_sealed);
    EXPECT_EQ(back->data(), first) << "the same file coming back reuses our warm mapping";
    EXPECT_FALSE(back->readonly());
}
