// GoogleTest suite of shmipc's public C++ API (include/shmipc/), built against the installed
// package. Cross-language exchanges are in tests/python/test_cpp_api.py; here: every kind's
// behaviour and errors from C++ alone, with real processes (fork) where a peer must die.
#include <shmipc/shmipc.hpp>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;

namespace {

std::string unique(const char *what) {
    static int n = 0;
    return std::string("cppapi_gt_") + what + "_" + std::to_string(::getpid()) + "_" +
           std::to_string(n++);
}

std::span<const std::byte> bytes_of(std::string_view s) {
    return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::string str(std::span<const std::byte> b) {
    return {reinterpret_cast<const char *>(b.data()), b.size()};
}

struct SocketPair {
    int fd[2] = {-1, -1};
    SocketPair() { EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd), 0); }
    ~SocketPair() {
        for (int f : fd)
            if (f >= 0)
                ::close(f);
    }
};

} // namespace

TEST(ApiArray, DtypeOfMatchesNumpy) {
    EXPECT_EQ(shmipc::dtype_of<float>(), "<f4");
    EXPECT_EQ(shmipc::dtype_of<double>(), "<f8");
    EXPECT_EQ(shmipc::dtype_of<std::uint8_t>(), "|u1");
    EXPECT_EQ(shmipc::dtype_of<std::int8_t>(), "|i1");
    EXPECT_EQ(shmipc::dtype_of<std::int64_t>(), "<i8");
    EXPECT_EQ(shmipc::dtype_of<std::uint16_t>(), "<u2");
    EXPECT_EQ(shmipc::dtype_of<bool>(), "|b1");
    EXPECT_EQ(shmipc::dtype_of<std::complex<double>>(), "<c16");
    auto info = shmipc::array_info<float>({2, 3});
    EXPECT_EQ(info.size(), 6u);
    EXPECT_EQ(info.nbytes(), 24u);
    EXPECT_EQ(shmipc::array_info<float>({}).size(), 1u); // 0-d: one element
    shmipc::ArrayInfo bad{"not a dtype", {1}, false};
    EXPECT_THROW((void)bad.itemsize(), shmipc::InvalidArgument);
    shmipc::ArrayInfo neg{"<f4", {-1}, false};
    EXPECT_THROW((void)neg.size(), shmipc::InvalidArgument);
    std::vector<float> xs(6);
    EXPECT_THROW((void)shmipc::array_cast<double>(std::as_bytes(std::span(xs)), info),
                 shmipc::InvalidArgument);
    EXPECT_EQ(shmipc::array_cast<float>(std::as_bytes(std::span(xs)), info).size(), 6u);
}

TEST(ApiErrors, RootedAtError) {
    static_assert(std::is_base_of_v<shmipc::Error, shmipc::PeerDied>);
    static_assert(std::is_base_of_v<shmipc::Error, shmipc::OsError>);
    static_assert(std::is_base_of_v<std::runtime_error, shmipc::Error>);
    try {
        (void)shmipc::Heap::attach(unique("missing"));
        FAIL() << "attach of a missing heap";
    } catch (const shmipc::OsError &e) {
        EXPECT_EQ(e.err(), ENOENT);
    }
    EXPECT_THROW((void)shmipc::normalize_name("a/b"), shmipc::InvalidArgument);
    EXPECT_EQ(shmipc::normalize_name("frames"), "/frames");
    EXPECT_FALSE(shmipc::unlink(unique("never")));
}

TEST(ApiBuffer, SendMovesAndRecvOwns) {
    SocketPair sp;
    shmipc::Buffer b(4096);
    EXPECT_EQ(b.nbytes(), 4096u);
    EXPECT_FALSE(b.readonly());
    for (auto x : b.bytes())
        ASSERT_EQ(x, std::byte{0}); // zero-filled
    std::memcpy(b.writable_bytes().data(), "hello", 5);
    shmipc::send(sp.fd[0], b, shmipc::Meta::json(R"({"k": 1})"));
    EXPECT_TRUE(b.readonly()); // moved: the sender's mapping is read-only
    EXPECT_THROW((void)b.writable_bytes(), shmipc::BufferBusy);
    shmipc::Buffer r = shmipc::recv(sp.fd[1], 5s);
    EXPECT_EQ(str(r.bytes().first(5)), "hello");
    EXPECT_EQ(r.meta().kind, shmipc::Meta::Kind::Json);
    EXPECT_EQ(r.meta().data, R"({"k": 1})");
    EXPECT_FALSE(r.readonly());
    r.writable_bytes()[0] = std::byte{'J'};
    r.close();
    EXPECT_TRUE(r.closed());
    EXPECT_THROW((void)r.bytes(), shmipc::Closed);
    EXPECT_THROW((void)shmipc::Meta::json("[1]"), shmipc::InvalidArgument);
}

TEST(ApiBuffer, ArraysAndErrors) {
    SocketPair sp;
    auto b = shmipc::Buffer::from_bytes(bytes_of(std::string(24, '\0')));
    auto *p = reinterpret_cast<std::int32_t *>(b.writable_bytes().data());
    std::iota(p, p + 6, 7);
    shmipc::send_array(sp.fd[0], b, shmipc::array_info<std::int32_t>({3, 2}));
    shmipc::ArrayBuffer r = shmipc::recv_array(sp.fd[1], 5s);
    EXPECT_EQ(r.info.dtype, "<i4");
    EXPECT_EQ(r.info.shape, (std::vector<std::int64_t>{3, 2}));
    auto v = r.as<std::int32_t>();
    EXPECT_EQ(std::vector<std::int32_t>(v.begin(), v.end()),
              (std::vector<std::int32_t>{7, 8, 9, 10, 11, 12}));
    // An array message is not a plain buffer, and the reverse.
    shmipc::Buffer c(8);
    shmipc::send_array(sp.fd[0], c, shmipc::array_info<std::uint8_t>({8}));
    EXPECT_THROW((void)shmipc::recv(sp.fd[1], 5s), shmipc::CorruptSegment);
    shmipc::Buffer d(8);
    shmipc::send(sp.fd[0], d);
    EXPECT_THROW((void)shmipc::recv_array(sp.fd[1], 5s), shmipc::CorruptSegment);
    // Too large a shape for the buffer; a timeout; the peer's close.
    shmipc::Buffer e(8);
    EXPECT_THROW(shmipc::send_array(sp.fd[0], e, shmipc::array_info<double>({2})),
                 shmipc::InvalidArgument);
    EXPECT_THROW((void)shmipc::recv(sp.fd[1], 0ms), shmipc::Timeout);
    ::close(sp.fd[0]);
    sp.fd[0] = -1;
    EXPECT_THROW((void)shmipc::recv(sp.fd[1], 5s), shmipc::EndOfStream);
}

TEST(ApiHeap, BlocksAndChannelBetweenHandles) {
    const std::string name = unique("heap");
    auto heap = shmipc::Heap::create(name, {.size = 1 << 20});
    auto other = shmipc::Heap::attach(name); // the receiver: a handle of its own
    EXPECT_EQ(heap.name(), "/" + name);
    auto tx = heap.channel("c0", 8);
    auto rx = other.channel("c0");
    EXPECT_EQ(rx.capacity(), 8u);
    EXPECT_FALSE(rx.poll());
    EXPECT_THROW((void)rx.recv(10ms), shmipc::Timeout);

    tx.send(std::string_view("copied"));
    shmipc::Block blk = heap.allocate(100);
    EXPECT_EQ(blk.nbytes(), 100u);
    std::memset(blk.bytes().data(), 'z', 100);
    const std::uint64_t off = blk.offset();
    tx.send(std::move(blk)); // moved: zero copy
    EXPECT_TRUE(blk.released());
    std::vector<float> xs = {1, 2, 3, 4};
    tx.send_array(std::span<const float>(xs), {2, 2});
    EXPECT_EQ(rx.size(), 3u);
    EXPECT_TRUE(rx.poll(1s));

    EXPECT_EQ(str(rx.recv(1s).bytes()), "copied");
    shmipc::Block got = rx.recv(1s);
    EXPECT_EQ(got.offset(), off); // the same bytes of the heap
    EXPECT_EQ(got.nbytes(), 100u);
    EXPECT_EQ(str(got.bytes()), std::string(100, 'z'));
    shmipc::ArrayBlock a = rx.recv_array(1s);
    EXPECT_EQ(a.info, shmipc::array_info<float>({2, 2}));
    EXPECT_EQ(a.as<float>()[3], 4.0f);
    got.release();
    EXPECT_TRUE(got.released());
    EXPECT_THROW((void)got.bytes(), shmipc::Closed);

    tx.close(); // end of stream
    EXPECT_TRUE(tx.closed());
    EXPECT_THROW(tx.send(std::string_view("x")), shmipc::Closed);
    EXPECT_THROW((void)rx.recv(1s), shmipc::EndOfStream);
    EXPECT_GE(heap.stats().size, 1u << 20);
}

TEST(ApiHeap, SecondSenderIsBusyAndForeignBlocksRefused) {
    const std::string name = unique("busy");
    auto heap = shmipc::Heap::create(name, {.size = 1 << 20});
    auto h2 = shmipc::Heap::attach(name);
    auto a = heap.channel("c");
    auto b = h2.channel("c");
    a.send(std::string_view("1"));
    EXPECT_THROW(b.send(std::string_view("2"), 100ms), shmipc::ChannelBusy);
    shmipc::Block foreign = h2.allocate(8);
    EXPECT_THROW(a.send(std::move(foreign)), shmipc::InvalidArgument);
    EXPECT_FALSE(foreign.released()); // a failed send leaves the block to the caller
    EXPECT_THROW((void)heap.allocate(0), shmipc::InvalidArgument);
    EXPECT_THROW((void)heap.allocate(std::size_t{1} << 30), shmipc::OutOfMemory);
}

TEST(ApiHeap, KilledSenderIsPeerDied) {
    const std::string name = unique("died");
    auto heap = shmipc::Heap::create(name, {.size = 1 << 20});
    auto rx = heap.channel("c");
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        try {
            auto h = shmipc::Heap::attach(name);
            auto tx = h.channel("c");
            tx.send(std::string_view("last words"));
            char c = 'r';
            (void)!::write(ready[1], &c, 1);
            ::pause();
        } catch (...) {
        }
        ::_exit(1);
    }
    char c;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    EXPECT_EQ(str(rx.recv(5s).bytes()), "last words"); // what it sent before dying arrives
    EXPECT_THROW((void)rx.recv(5s), shmipc::PeerDied);
    ::close(ready[0]);
    ::close(ready[1]);
}

TEST(ApiQueue, PutGetAndLimits) {
    const std::string name = unique("q");
    auto q = shmipc::MessageQueue::create(name, {.maxsize = 2, .max_message_size = 16});
    auto r = shmipc::MessageQueue::attach(name);
    EXPECT_TRUE(q.empty());
    q.put("one");
    q.put(bytes_of("two"));
    EXPECT_EQ(r.size(), 2u);
    EXPECT_FALSE(q.try_put(bytes_of("three")));
    EXPECT_THROW(q.put("three", 20ms), shmipc::Timeout); // queue.Full
    EXPECT_THROW(q.put(std::string(17, 'x')), shmipc::InvalidArgument);
    EXPECT_EQ(r.get_string(1s), "one");
    EXPECT_EQ(str(r.get(1s)), "two");
    EXPECT_FALSE(r.try_get().has_value());
    EXPECT_THROW((void)r.get(20ms), shmipc::Timeout); // queue.Empty
    EXPECT_EQ(q.maxsize(), 2u);
    EXPECT_EQ(q.max_message_size(), 16u);
    r.close();
    EXPECT_THROW((void)r.get(), shmipc::Closed);
}

TEST(ApiValue, EveryKindReadsBack) {
    const std::string name = unique("v");
    auto w = shmipc::SharedValue::create(name, {.size = 64});
    auto r = shmipc::SharedValue::attach(name);
    EXPECT_EQ(r.read().kind, shmipc::Value::Kind::None);
    std::uint64_t v1 = w.write_text("text");
    EXPECT_TRUE(r.wait(0, 1s));
    auto t = r.read();
    EXPECT_EQ(t.kind, shmipc::Value::Kind::Text);
    EXPECT_EQ(t.text(), "text");
    EXPECT_EQ(t.version, v1);
    w.write_bytes(bytes_of("raw"));
    EXPECT_EQ(r.read().kind, shmipc::Value::Kind::Bytes);
    std::vector<std::int64_t> m = {1, 2, 3, 4, 5, 6};
    std::uint64_t v3 = w.write_array(std::span<const std::int64_t>(m), {2, 3});
    auto a = r.read();
    EXPECT_EQ(a.kind, shmipc::Value::Kind::Array);
    EXPECT_EQ(a.array, shmipc::array_info<std::int64_t>({2, 3}));
    EXPECT_EQ(a.as<std::int64_t>()[5], 6);
    EXPECT_EQ(r.version(), v3);
    EXPECT_FALSE(r.wait(v3, 20ms));
    // Too large: refused, the old value stays.
    EXPECT_THROW(w.write_text(std::string(65, 'x')), shmipc::InvalidArgument);
    EXPECT_EQ(r.read().version, v3);
    shmipc::ArrayInfo f = shmipc::array_info<std::int64_t>({6});
    f.fortran = true;
    EXPECT_THROW(w.write_array(std::as_bytes(std::span(m)), f), shmipc::InvalidArgument);
}

TEST(ApiStream, OwnerAndGuest) {
    const std::string name = unique("s");
    {
        auto s = shmipc::Stream::create(name);
        EXPECT_TRUE(s.owner());
        s.write("hello stream");
        auto g = shmipc::Stream::open(name);
        EXPECT_FALSE(g.owner());
        EXPECT_EQ(g.read_all(), "hello stream");
        EXPECT_EQ(g.size(), 12u);
        s.truncate(5);
        g.seek(0);
        EXPECT_EQ(g.read_all(), "hello");
        EXPECT_THROW((void)shmipc::Stream::create(name), shmipc::OsError); // EEXIST
    } // the owner's close removes the name
    EXPECT_THROW((void)shmipc::Stream::open(name), shmipc::OsError);
}

namespace {
TEST(ApiTopic, EverySubscriberGetsEverySampleAndTheStreamEnds) {
    auto name = unique("topic");
    auto heap = shmipc::Heap::create(name);
    auto pub = shmipc::Publisher::open(heap, "t", {.capacity = 4, .history = 1});
    auto a = shmipc::Subscriber::open(heap, "t");
    auto b = shmipc::Subscriber::open(heap, "t");
    EXPECT_EQ(pub.subscribers(), 2u);
    pub.publish(std::string_view("one"), 1s);
    std::vector<float> xs{1.5f, 2.5f, 3.5f, 4.5f};
    pub.publish_array(std::span<const float>(xs), {2, 2}, 1s);
    shmipc::Block blk = heap.allocate(64);
    std::memset(blk.bytes().data(), 7, 64);
    pub.publish(std::move(blk), 1s);
    EXPECT_TRUE(blk.released()); // moved: zero copy
    for (auto *s : {&a, &b}) {
        EXPECT_EQ(s->pending(), 3u);
        shmipc::Sample one = s->recv(1s);
        EXPECT_EQ(str(one.bytes()), "one");
        shmipc::Sample arr = s->recv(1s);
        ASSERT_TRUE(arr.is_array());
        EXPECT_EQ(arr.info().dtype, "<f4");
        EXPECT_EQ(arr.as<float>()[3], 4.5f);
        shmipc::Sample raw = s->recv(1s);
        EXPECT_EQ(raw.bytes().size(), 64u);
        EXPECT_EQ(raw.bytes()[63], std::byte{7});
    }
    // A late joiner gets `history` earlier samples.
    auto late = shmipc::Subscriber::open(heap, "t");
    EXPECT_EQ(late.recv(1s).bytes().size(), 64u);
    EXPECT_THROW((void)a.recv(10ms), shmipc::Timeout);
    EXPECT_THROW((void)shmipc::Publisher::open(heap, "t"), shmipc::ChannelBusy);
    pub.close();
    EXPECT_THROW((void)a.recv(1s), shmipc::EndOfStream);
}

TEST(ApiTopic, DropOldestCountsWhatASlowSubscriberMissed) {
    auto name = unique("topic_drop");
    auto heap = shmipc::Heap::create(name);
    auto pub = shmipc::Publisher::open(heap, "t", {.capacity = 2, .drop_oldest = true});
    auto s = shmipc::Subscriber::open(heap, "t");
    for (int i = 0; i < 5; ++i)
        pub.publish("m" + std::to_string(i), 0ns); // never waits
    EXPECT_EQ(str(s.recv(1s).bytes()), "m3");
    EXPECT_EQ(s.missed(), 3u);
}

TEST(ApiTopic, KilledPublisherIsPeerDiedAfterTheDrain) {
    auto name = unique("topic_kill");
    auto heap = shmipc::Heap::create(name);
    pid_t pid = ::fork();
    if (pid == 0) {
        auto h = shmipc::Heap::attach(name);
        auto pub = shmipc::Publisher::open(h, "t");
        for (int i = 0; i < 500 && pub.subscribers() == 0; ++i)
            std::this_thread::sleep_for(10ms);
        pub.publish(std::string_view("last words"), 1s);
        ::raise(SIGKILL);
    }
    std::optional<shmipc::Subscriber> s;
    for (int i = 0; i < 500 && !s; ++i) {
        try {
            s.emplace(shmipc::Subscriber::open(heap, "t"));
        } catch (const shmipc::OsError &) {
            std::this_thread::sleep_for(10ms); // the child has not created the topic yet
        }
    }
    ASSERT_TRUE(s);
    EXPECT_EQ(str(s->recv(10s).bytes()), "last words");
    EXPECT_THROW((void)s->recv(10s), shmipc::PeerDied);
    int status = 0;
    ::waitpid(pid, &status, 0);
}
} // namespace
