#include "ipc_core/base/errors.hpp"
#include "ipc_core/queue/message_queue.hpp"
#include "ipc_core/testing/crash_point.hpp"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <optional>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace shmipc;

namespace {

const char *const kPointNames[] = {"", "queue.put.claimed", "queue.put.half", "queue.get.claimed",
                                   "queue.get.copied"};

std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-gtest-mq-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

bool sink_string(void *ctx, const std::byte *data, std::size_t n) {
    static_cast<std::string *>(ctx)->assign(reinterpret_cast<const char *>(data), n);
    return true;
}

bool put_str(MessageQueue &q, const std::string &s) {
    return q.try_put(s.data(), s.size());
}

std::optional<std::string> get_str(MessageQueue &q, double timeout = 0) {
    std::string out;
    if (q.get(&sink_string, &out, Deadline(timeout)))
        return out;
    return std::nullopt;
}

// Runs `body` in a forked child and returns its wait status.
template <class F> int in_child(F &&body) {
    pid_t pid = ::fork();
    if (pid == 0) {
        body();
        ::_exit(0);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
}

bool killed(int status) {
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

} // namespace

TEST(MessageQueue, messages_come_out_in_order_and_full_and_empty_are_reported) {
    auto q = MessageQueue::create(fresh("fifo"), 3, 32, 0600, false);
    EXPECT_EQ(q.capacity(), 3u);
    EXPECT_EQ(q.max_message_size(), 32u);
    EXPECT_FALSE(get_str(q));
    EXPECT_TRUE(put_str(q, "a"));
    EXPECT_TRUE(put_str(q, ""));
    EXPECT_TRUE(put_str(q, std::string(32, 'z')));
    EXPECT_EQ(q.size(), 3u);
    EXPECT_FALSE(put_str(q, "d")) << "a full queue refuses a non-blocking put";
    EXPECT_EQ(get_str(q), "a");
    EXPECT_EQ(get_str(q), "");
    EXPECT_TRUE(put_str(q, "d"));
    EXPECT_EQ(get_str(q), std::string(32, 'z'));
    EXPECT_EQ(get_str(q), "d");
    EXPECT_FALSE(get_str(q));
    EXPECT_EQ(q.size(), 0u);
}

TEST(MessageQueue, a_message_larger_than_the_maximum_is_refused_and_changes_nothing) {
    auto q = MessageQueue::create(fresh("big"), 2, 8, 0600, false);
    std::string big(9, 'x');
    EXPECT_THROW((void)q.try_put(big.data(), big.size()), InvalidArgument);
    EXPECT_EQ(q.size(), 0u);
    EXPECT_TRUE(put_str(q, "ok"));
    EXPECT_EQ(get_str(q), "ok");
}

TEST(MessageQueue, bad_sizes_are_invalid_arguments) {
    EXPECT_THROW(MessageQueue::create(fresh("s"), 0, 8, 0600, false), InvalidArgument);
    EXPECT_THROW(MessageQueue::create(fresh("s"), 4, 0, 0600, false), InvalidArgument);
    EXPECT_THROW(MessageQueue::create(fresh("s"), kQueueMaxCapacity + 1, 8, 0600, false),
                 InvalidArgument);
}

TEST(MessageQueue, a_second_handle_sees_the_same_queue_and_has_its_own_client_index) {
    std::string name = fresh("attach");
    auto a = MessageQueue::create(name, 4, 16, 0600, false);
    auto b = MessageQueue::attach(name);
    EXPECT_NE(a.client_index(), b.client_index());
    EXPECT_TRUE(put_str(a, "hello"));
    EXPECT_EQ(get_str(b), "hello");
    EXPECT_TRUE(a.owner());
    EXPECT_FALSE(b.owner());
}

TEST(MessageQueue, attaching_a_segment_of_another_kind_is_corrupt) {
    std::string name = fresh("kind");
    auto s = MemorySegment::create_named(name, 8192, 0600, SegmentKind::SharedValue, 1, false);
    EXPECT_THROW(MessageQueue::attach(name), CorruptSegment);
}

TEST(MessageQueue, attaching_a_queue_with_inconsistent_sizes_is_corrupt) {
    std::string name = fresh("sizes");
    auto q = MessageQueue::create(name, 4, 16, 0600, false);
    // Scribble over the capacity through a second mapping.
    auto raw = MemorySegment::attach_named(name, SegmentKind::MessageQueue,
                                           kMessageQueueLayoutVersion, 128);
    auto *ctl = reinterpret_cast<QueueControl *>(raw.data() + sizeof(SegmentHeader));
    ctl->capacity = 1000;
    EXPECT_THROW(MessageQueue::attach(name), CorruptSegment);
    ctl->capacity = 4;
    ctl->slot_stride = 7;
    EXPECT_THROW(MessageQueue::attach(name), CorruptSegment);
}

TEST(MessageQueue, closed_queue_throws_closed) {
    auto q = MessageQueue::create(fresh("closed"), 2, 8, 0600, false);
    q.close();
    q.close();
    EXPECT_THROW((void)put_str(q, "x"), Closed);
    EXPECT_EQ(q.size(), 0u);
}

TEST(MessageQueue, a_blocking_get_times_out_on_an_empty_queue) {
    auto q = MessageQueue::create(fresh("timeout"), 2, 8, 0600, false);
    auto t0 = Clock::now();
    EXPECT_FALSE(get_str(q, 0.05));
    EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(45));
}

TEST(MessageQueue, every_message_arrives_exactly_once_with_four_producers_and_four_consumers) {
    std::string name = fresh("mpmc");
    auto creator = MessageQueue::create(name, 64, 16, 0600, false);
    constexpr int kProducers = 4, kConsumers = 4, kPerProducer = 20000;
    std::vector<std::atomic<int>> seen(kProducers * kPerProducer);
    std::atomic<int> received{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int p = 0; p < kProducers; ++p)
        threads.emplace_back([&, p] {
            auto q = MessageQueue::attach(name); // one client per thread
            while (!go.load())
                std::this_thread::yield();
            for (int i = 0; i < kPerProducer; ++i) {
                int id = p * kPerProducer + i;
                ASSERT_TRUE(q.put(&id, sizeof id, Deadline(30.0)));
            }
        });
    for (int c = 0; c < kConsumers; ++c)
        threads.emplace_back([&] {
            auto q = MessageQueue::attach(name);
            while (!go.load())
                std::this_thread::yield();
            std::string out;
            while (received.load() < kProducers * kPerProducer) {
                if (!q.get(&sink_string, &out, Deadline(0.01)))
                    continue;
                ASSERT_EQ(out.size(), sizeof(int));
                int id;
                std::memcpy(&id, out.data(), sizeof id);
                seen[id].fetch_add(1);
                received.fetch_add(1);
            }
        });
    go.store(true);
    for (auto &t : threads)
        t.join();
    for (std::size_t i = 0; i < seen.size(); ++i)
        ASSERT_EQ(seen[i].load(), 1) << "message " << i;
    EXPECT_EQ(creator.size(), 0u);
}

TEST(MessageQueue, a_producer_killed_after_claiming_a_slot_does_not_block_consumers) {
    std::string name = fresh("pkill");
    auto q = MessageQueue::create(name, 4, 64, 0600, false);
    ASSERT_TRUE(put_str(q, "before"));
    int status = in_child([&] {
        auto c = MessageQueue::attach(name);
        arm_crash_point("queue.put.claimed", 1);
        (void)put_str(c, "never seen");
    });
    ASSERT_TRUE(killed(status));
    ASSERT_TRUE(put_str(q, "after"));
    EXPECT_EQ(get_str(q, 5), "before");
    EXPECT_EQ(get_str(q, 5), "after") << "the dead producer's slot is skipped";
    EXPECT_FALSE(get_str(q, 0.05));
    // The discarded slot is usable again: fill the queue completely.
    for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(put_str(q, std::to_string(i)));
    for (int i = 0; i < 4; ++i)
        EXPECT_EQ(get_str(q, 1), std::to_string(i));
}

TEST(MessageQueue, a_half_written_message_is_discarded_when_its_producer_dies) {
    std::string name = fresh("half");
    auto q = MessageQueue::create(name, 4, 64, 0600, false);
    int status = in_child([&] {
        auto c = MessageQueue::attach(name);
        arm_crash_point("queue.put.half", 1);
        (void)put_str(c, std::string(40, 'h'));
    });
    ASSERT_TRUE(killed(status));
    EXPECT_FALSE(get_str(q, 0.1)) << "no half message ever becomes visible";
    ASSERT_TRUE(put_str(q, "next"));
    EXPECT_EQ(get_str(q, 5), "next");
}

TEST(MessageQueue, a_consumer_killed_before_returning_a_message_hands_it_to_another_consumer) {
    for (int point : {3, 4}) {
        std::string name = fresh("ckill");
        auto q = MessageQueue::create(name, 4, 64, 0600, false);
        ASSERT_TRUE(put_str(q, "precious"));
        ASSERT_TRUE(put_str(q, "second"));
        int status = in_child([&] {
            auto c = MessageQueue::attach(name);
            arm_crash_point(kPointNames[point], 1);
            (void)get_str(c, 1);
        });
        ASSERT_TRUE(killed(status)) << "crash point " << point;
        std::vector<std::string> got;
        while (auto m = get_str(q, 0.3))
            got.push_back(*m);
        std::sort(got.begin(), got.end());
        EXPECT_EQ(got, (std::vector<std::string>{"precious", "second"})) << "crash point " << point;
    }
}

TEST(MessageQueue, a_forked_child_gets_its_own_client_and_never_removes_the_parents_name) {
    std::string name = fresh("fork");
    auto q = MessageQueue::create(name, 4, 64, 0600, false);
    std::uint32_t parent_index = q.client_index();
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    int status = in_child([&] {
        ::close(pipefd[0]);
        (void)put_str(q, "from child");
        std::uint32_t idx = q.client_index();
        (void)!::write(pipefd[1], &idx, sizeof idx);
        q.close();
    });
    ::close(pipefd[1]);
    std::uint32_t child_index = 0;
    ASSERT_EQ(::read(pipefd[0], &child_index, sizeof child_index), ssize_t(sizeof child_index));
    ::close(pipefd[0]);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_NE(child_index, parent_index);
    EXPECT_EQ(::access(("/dev/shm/" + name).c_str(), F_OK), 0);
    EXPECT_EQ(get_str(q, 1), "from child");
}

TEST(MessageQueue, a_handle_that_recycles_a_dead_clients_index_repairs_its_claims_first) {
    std::string name = fresh("recycle");
    auto q = MessageQueue::create(name, 4, 64, 0600, false);
    int pipefd[2];
    ASSERT_EQ(::pipe(pipefd), 0);
    int status = in_child([&] {
        ::close(pipefd[0]);
        auto c = MessageQueue::attach(name);
        std::uint32_t idx = c.client_index();
        (void)!::write(pipefd[1], &idx, sizeof idx);
        arm_crash_point("queue.put.claimed", 1); // dies holding WRITING(lap 0, idx) at the head
        (void)put_str(c, "never seen");
    });
    ::close(pipefd[1]);
    std::uint32_t dead = 0;
    ASSERT_EQ(::read(pipefd[0], &dead, sizeof dead), ssize_t(sizeof dead));
    ::close(pipefd[0]);
    ASSERT_TRUE(killed(status));
    // Attach until a handle gets the dead client's index (registration probes round-robin).
    MessageQueue recycled;
    for (std::uint32_t i = 0; i <= kQueueMaxClients && !recycled.is_open(); ++i) {
        auto h = MessageQueue::attach(name);
        if (h.client_index() == dead)
            recycled = std::move(h);
    }
    ASSERT_TRUE(recycled.is_open());
    // The dead claim now names a live client; without the repair the head would be stuck.
    ASSERT_TRUE(put_str(q, "after"));
    EXPECT_EQ(get_str(q, 2), "after");
}

TEST(MessageQueue, a_stopped_producer_does_not_hold_the_messages_behind_it_hostage) {
    std::string name = fresh("stall");
    auto q = MessageQueue::create(name, 16, 64, 0600, false);
    pid_t pid = ::fork();
    if (pid == 0) {
        auto mine = MessageQueue::attach(name);
        arm_crash_point("queue.put.half", 1, CrashAction::Stall); // stops holding WRITING
        (void)put_str(mine, "stuck");
        ::_exit(1);
    }
    // Wait until the child holds the head slot half written.
    for (int i = 0; i < 30000 && q.size() == 0; ++i)
        ::usleep(100);
    ASSERT_EQ(q.size(), 1u) << "the child claimed the head slot";
    for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(put_str(q, "m" + std::to_string(i)));
    for (int i = 0; i < 4; ++i)
        EXPECT_EQ(get_str(q, 5.0), "m" + std::to_string(i)) << "delivered past the stuck head";
    EXPECT_FALSE(get_str(q, 0.05).has_value()) << "the half-written message is never delivered";
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    ASSERT_TRUE(put_str(q, "after"));
    EXPECT_EQ(get_str(q, 5.0), "after") << "the dead writer's slot is discarded";
}
