#include "ipc_core/base/errors.hpp"
#include "ipc_core/channel/channel.hpp"
#include "ipc_core/heap/heap.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <sys/wait.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace shmipc;
using namespace std::chrono_literals;

namespace {

std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-gtest-ch-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

std::unique_ptr<Heap> make_heap(const std::string &name, std::size_t size = 8 << 20) {
    HeapOptions o;
    o.size = size;
    return Heap::create(name, o);
}

Deadline secs(double s) {
    return Deadline(s);
}

std::string payload(std::uint64_t i) {
    // Lengths 0..199, content derived from i: catches reordering, loss and torn copies.
    std::string s(i % 200, '\0');
    for (std::size_t k = 0; k < s.size(); ++k)
        s[k] = static_cast<char>((i * 31 + k) & 0xff);
    return s;
}

std::string read_block(Heap &h, const ChannelMessage &m) {
    return std::string(static_cast<const char *>(h.to_ptr(m.offset)), m.length);
}

// Runs `body` in a forked child with its own attach of the heap; returns the child's pid.
template <class Body> pid_t in_child(const std::string &heap_name, Body body) {
    pid_t pid = ::fork();
    if (pid != 0)
        return pid;
    int code = 0;
    try {
        auto h = Heap::attach(heap_name);
        code = body(*h);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "child failed: %s\n", e.what());
        code = 99;
    }
    ::_exit(code);
}

int wait_child(pid_t pid) {
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid)
        return -1;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

} // namespace

TEST(Channel, a_block_moves_by_offset_and_the_receiver_then_owns_it) {
    auto heap = make_heap(fresh("move"));
    auto tx = Channel::open(*heap, "cam", 8);
    auto rx = Channel::open(*heap, "cam", 8);
    std::uint64_t off = heap->allocate(1000);
    std::memset(heap->to_ptr(off), 7, 1000);
    tx->send_block(off, 1000, RecordKind::Block, {}, secs(1));
    EXPECT_EQ(heap->owner_of(off), kOwnerHeld) << "in flight, the heap holds the block";
    EXPECT_EQ(tx->queued(), 1u);
    ChannelMessage m = rx->recv(secs(1));
    EXPECT_EQ(m.offset, off) << "same block, no copy";
    EXPECT_EQ(m.length, 1000u);
    EXPECT_EQ(heap->owner_of(off), heap->client_id());
    EXPECT_EQ(static_cast<const unsigned char *>(heap->to_ptr(off))[999], 7);
    heap->deallocate(off);
}

TEST(Channel, bytes_and_array_metadata_arrive_intact_and_in_order) {
    auto heap = make_heap(fresh("bytes"));
    auto tx = Channel::open(*heap, "c", 300);
    auto rx = Channel::open(*heap, "c", 300);
    const auto allocations = heap->stats().allocations;
    for (std::uint64_t i = 0; i < 250; ++i) {
        std::string p = payload(i);
        tx->send_bytes(p.data(), p.size(), i % 2 ? RecordKind::Array : RecordKind::Block,
                       i % 2 ? "meta" + std::to_string(i) : "", secs(1));
    }
    for (std::uint64_t i = 0; i < 250; ++i) {
        ChannelMessage m = rx->recv(secs(1));
        EXPECT_EQ(read_block(*heap, m), payload(i)) << i;
        EXPECT_EQ(m.meta, i % 2 ? "meta" + std::to_string(i) : "");
        heap->deallocate(m.offset);
    }
    heap->flush_thread_caches();
    EXPECT_EQ(heap->stats().allocations, allocations)
        << "metadata blocks are freed by the receiver";
}

TEST(Channel, a_second_sender_or_receiver_in_the_same_process_is_refused) {
    auto heap = make_heap(fresh("busy"));
    auto a = Channel::open(*heap, "c", 4);
    auto b = Channel::open(*heap, "c", 4);
    a->send_bytes("x", 1, RecordKind::Block, {}, secs(1));
    EXPECT_THROW(b->send_bytes("y", 1, RecordKind::Block, {}, secs(1)), ChannelBusy);
    auto c = Channel::open(*heap, "c", 4);
    auto d = Channel::open(*heap, "c", 4);
    heap->deallocate(c->recv(secs(1)).offset);
    EXPECT_THROW((void)d->recv(secs(0)), ChannelBusy);
    EXPECT_THROW((void)a->recv(secs(0)), InvalidArgument) << "a sender cannot receive";
    a->release();
    b->send_bytes("y", 1, RecordKind::Block, {}, secs(1)); // the role is free again
    heap->deallocate(c->recv(secs(1)).offset);
}

TEST(Channel, a_second_sender_in_another_process_is_refused_while_the_first_lives) {
    std::string hn = fresh("busy2");
    auto heap = make_heap(hn);
    auto tx = Channel::open(*heap, "c", 4);
    tx->send_bytes("x", 1, RecordKind::Block, {}, secs(1));
    pid_t pid = in_child(hn, [](Heap &h) {
        auto ch = Channel::open(h, "c", 4);
        try {
            ch->send_bytes("y", 1, RecordKind::Block, {}, Deadline(1.0));
        } catch (const ChannelBusy &) {
            return 0;
        }
        return 1;
    });
    EXPECT_EQ(wait_child(pid), 0);
    tx.reset(); // the first sender goes away: the role is free for a new process
    pid = in_child(hn, [](Heap &h) {
        auto ch = Channel::open(h, "c", 4);
        ch->send_bytes("y", 1, RecordKind::Block, {}, Deadline(1.0));
        return 0;
    });
    EXPECT_EQ(wait_child(pid), 0);
    auto rx = Channel::open(*heap, "c", 4);
    EXPECT_EQ(read_block(*heap, rx->recv(secs(1))), "x");
    EXPECT_EQ(read_block(*heap, rx->recv(secs(1))), "y");
}

TEST(Channel, the_receiver_drains_then_sees_end_of_stream_and_later_sends_are_refused) {
    auto heap = make_heap(fresh("eof"));
    auto tx = Channel::open(*heap, "c", 4);
    auto rx = Channel::open(*heap, "c", 4);
    tx->send_bytes("a", 1, RecordKind::Block, {}, secs(1));
    tx->send_bytes("b", 1, RecordKind::Block, {}, secs(1));
    tx->close();
    tx->close(); // idempotent
    EXPECT_THROW(tx->send_bytes("c", 1, RecordKind::Block, {}, secs(1)), Closed);
    EXPECT_EQ(read_block(*heap, rx->recv(secs(1))), "a");
    EXPECT_EQ(read_block(*heap, rx->recv(secs(1))), "b");
    EXPECT_THROW((void)rx->recv(secs(1)), EndOfStream);
    EXPECT_TRUE(rx->poll(secs(0))) << "poll says recv will not block (it raises)";
    auto tx2 = Channel::open(*heap, "c", 4);
    try {
        tx2->send_bytes("d", 1, RecordKind::Block, {}, secs(1));
        FAIL() << "expected EPIPE";
    } catch (const OsError &e) {
        EXPECT_EQ(e.code().value(), EPIPE);
    }
}

TEST(Channel, recv_on_an_empty_channel_times_out_and_send_on_a_full_one_too) {
    auto heap = make_heap(fresh("timeout"));
    auto tx = Channel::open(*heap, "c", 2);
    auto rx = Channel::open(*heap, "c", 2);
    rx->set_spin(0ns);
    tx->set_spin(0ns);
    EXPECT_THROW((void)rx->recv(secs(0)), Timeout);
    EXPECT_THROW((void)rx->recv(secs(0.05)), Timeout);
    EXPECT_FALSE(rx->poll(secs(0.02)));
    tx->send_bytes("a", 1, RecordKind::Block, {}, secs(0));
    tx->send_bytes("b", 1, RecordKind::Block, {}, secs(0));
    const auto before = heap->stats().allocations;
    EXPECT_THROW(tx->send_bytes("c", 1, RecordKind::Block, {}, secs(0.05)), Timeout);
    EXPECT_EQ(heap->stats().allocations, before) << "a failed send frees its copy";
    EXPECT_TRUE(rx->poll(secs(0)));
    EXPECT_EQ(tx->capacity(), 2u);
}

TEST(Channel, an_existing_channel_keeps_its_capacity_and_other_objects_are_not_channels) {
    auto heap = make_heap(fresh("cap"));
    auto a = Channel::open(*heap, "c", 16);
    auto b = Channel::open(*heap, "c", 1024);
    EXPECT_EQ(b->capacity(), 16u);
    (void)heap->find_or_create_named("blk", 64, [](void *) {});
    EXPECT_THROW(Channel::open(*heap, "blk", 4), InvalidArgument);
    EXPECT_THROW(Channel::open(*heap, "", 4), InvalidArgument);
    EXPECT_THROW(Channel::open(*heap, std::string(200, 'x'), 4), InvalidArgument);
    EXPECT_THROW(Channel::open(*heap, "zero", 0), InvalidArgument);
}

TEST(Channel, list_reports_capacity_queue_and_endpoint_liveness) {
    auto heap = make_heap(fresh("list"));
    auto tx = Channel::open(*heap, "one", 8);
    tx->send_bytes("a", 1, RecordKind::Block, {}, secs(1));
    auto other = Channel::open(*heap, "two", 3);
    auto infos = Channel::list(*heap);
    ASSERT_EQ(infos.size(), 2u);
    const ChannelInfo &one = infos[0].name == "one" ? infos[0] : infos[1];
    EXPECT_EQ(one.capacity, 8u);
    EXPECT_EQ(one.queued, 1u);
    EXPECT_TRUE(one.sender_alive);
    EXPECT_FALSE(one.receiver_alive);
}

TEST(Channel, a_dead_sender_ends_the_receivers_wait_after_it_drained_what_was_sent) {
    std::string hn = fresh("deadtx");
    auto heap = make_heap(hn);
    auto rx = Channel::open(*heap, "c", 16);
    rx->set_spin(0ns);
    pid_t pid = in_child(hn, [](Heap &h) {
        auto ch = Channel::open(h, "c", 16);
        ch->send_bytes("1", 1, RecordKind::Block, {}, Deadline(1.0));
        ch->send_bytes("2", 1, RecordKind::Block, {}, Deadline(1.0));
        ::kill(::getpid(), SIGKILL); // dies holding the sender role
        return 1;
    });
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    EXPECT_EQ(read_block(*heap, rx->recv(secs(5))), "1");
    EXPECT_EQ(read_block(*heap, rx->recv(secs(5))), "2");
    EXPECT_THROW((void)rx->recv(secs(10)), PeerDied) << "the death ends the wait, not the timeout";
    EXPECT_FALSE(rx->endpoint_alive(ChannelRole::Sender));
}

TEST(Channel, a_dead_receiver_ends_the_senders_wait_and_its_blocks_are_reclaimed) {
    std::string hn = fresh("deadrx");
    auto heap = make_heap(hn);
    auto tx = Channel::open(*heap, "c", 2);
    tx->set_spin(0ns);
    int sync[2];
    ASSERT_EQ(::pipe(sync), 0);
    pid_t pid = in_child(hn, [&](Heap &h) {
        auto ch = Channel::open(h, "c", 2);
        // Take two blocks and keep them, tell the parent, then wait to be killed.
        (void)ch->recv(Deadline(5.0));
        (void)ch->recv(Deadline(5.0));
        char c = 'k';
        (void)!::write(sync[1], &c, 1);
        ::pause();
        return 1;
    });
    const auto base_used = heap->stats().used;
    for (int i = 0; i < 2; ++i) {
        std::vector<char> big(100000, char(i));
        tx->send_bytes(big.data(), big.size(), RecordKind::Block, {}, secs(5));
    }
    char c = 0;
    ASSERT_EQ(::read(sync[0], &c, 1), 1);
    EXPECT_GE(heap->stats().used, base_used + 200000) << "the receiver holds two blocks";
    tx->send_bytes("a", 1, RecordKind::Block, {}, secs(1));
    tx->send_bytes("b", 1, RecordKind::Block, {}, secs(1));
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    EXPECT_THROW(tx->send_bytes("c", 1, RecordKind::Block, {}, secs(10)), PeerDied);
    EXPECT_LT(heap->stats().used, base_used + 100000)
        << "the dead receiver's blocks were reclaimed";
    ::close(sync[0]);
    ::close(sync[1]);
}

TEST(Channel, two_threads_pass_every_message_once_and_in_order) {
    auto heap = make_heap(fresh("fuzz-t"), 32 << 20);
    constexpr std::uint64_t kItems = 100'000;
    std::thread producer([&] {
        auto tx = Channel::open(*heap, "c", 64);
        std::uint64_t i = 0;
        while (i < kItems) {
            if (i % 3 == 0) {
                std::vector<std::string> keep;
                std::vector<std::pair<const void *, std::size_t>> batch;
                for (std::uint64_t k = 0; k < 50 && i + k < kItems; ++k)
                    keep.push_back(payload(i + k));
                for (auto &s : keep)
                    batch.emplace_back(s.data(), s.size());
                i += tx->send_many(batch, Deadline(30.0));
            } else {
                std::string p = payload(i);
                tx->send_bytes(p.data(), p.size(), RecordKind::Block, {}, Deadline(30.0));
                ++i;
            }
        }
        tx->close();
    });
    auto rx = Channel::open(*heap, "c", 64);
    std::uint64_t expect = 0;
    bool ok = true;
    try {
        for (;;) {
            if (expect % 2) {
                rx->recv_many(77, secs(30), [&](const void *p, std::size_t n) {
                    ok = ok && std::string(static_cast<const char *>(p), n) == payload(expect);
                    ++expect;
                });
            } else {
                ChannelMessage m = rx->recv(secs(30));
                ok = ok && read_block(*heap, m) == payload(expect);
                heap->deallocate(m.offset);
                ++expect;
            }
            ASSERT_TRUE(ok) << "message " << expect - 1 << " differs";
        }
    } catch (const EndOfStream &) {
    }
    producer.join();
    EXPECT_EQ(expect, kItems);
    heap->flush_thread_caches();
}

TEST(Channel, two_processes_pass_every_message_once_and_in_order) {
    std::string hn = fresh("fuzz-p");
    auto heap = make_heap(hn, 32 << 20);
    constexpr std::uint64_t kItems = 100'000;
    auto rx = Channel::open(*heap, "c", 128);
    pid_t pid = in_child(hn, [](Heap &h) {
        auto tx = Channel::open(h, "c", 128);
        for (std::uint64_t i = 0; i < kItems; ++i) {
            std::string p = payload(i);
            tx->send_bytes(p.data(), p.size(), RecordKind::Block, {}, Deadline(30.0));
        }
        tx->close();
        return 0;
    });
    std::uint64_t expect = 0;
    try {
        for (;;) {
            rx->recv_many(100, secs(30), [&](const void *p, std::size_t n) {
                if (std::string(static_cast<const char *>(p), n) != payload(expect))
                    throw std::runtime_error("message " + std::to_string(expect) + " differs");
                ++expect;
            });
        }
    } catch (const EndOfStream &) {
    }
    EXPECT_EQ(wait_child(pid), 0);
    EXPECT_EQ(expect, kItems);
}

TEST(Channel, a_forked_child_does_not_inherit_the_parents_role) {
    auto heap = make_heap(fresh("fork"));
    auto tx = Channel::open(*heap, "c", 4);
    tx->send_bytes("p", 1, RecordKind::Block, {}, secs(1));
    pid_t pid = ::fork();
    if (pid == 0) {
        // Same handle object, copied by fork: sending must not act as the parent's sender.
        int code = 1;
        try {
            tx->send_bytes("c", 1, RecordKind::Block, {}, Deadline(1.0));
        } catch (const ChannelBusy &) {
            code = 0;
        } catch (...) {
            code = 2;
        }
        ::_exit(code);
    }
    EXPECT_EQ(wait_child(pid), 0);
    EXPECT_EQ(tx->queued(), 1u);
    tx->send_bytes("q", 1, RecordKind::Block, {}, secs(1)); // the parent is still the sender
}

TEST(Channel, small_messages_travel_inline_without_heap_blocks) {
    auto heap = make_heap(fresh("inline"));
    auto tx = Channel::open(*heap, "c", 64);
    auto rx = Channel::open(*heap, "c", 64);
    heap->flush_thread_caches(true);
    const auto before = heap->stats().allocations;
    for (std::uint64_t i = 0; i < 20; ++i) {
        const std::string p = payload(i % kInlineSlotBytes);
        tx->send_bytes(p.data(), p.size(), RecordKind::Block, {}, secs(1));
    }
    const std::string big(kInlineSlotBytes + 1, 'b');
    tx->send_bytes(big.data(), big.size(), RecordKind::Block, {}, secs(1)); // a block record
    heap->flush_thread_caches(true);
    EXPECT_EQ(heap->stats().allocations, before + 1) << "only the large message took a block";
    // recv() of an inline record: a new block of the receiver with the bytes.
    ChannelMessage m = rx->recv(secs(1));
    EXPECT_EQ(read_block(*heap, m), payload(0));
    EXPECT_EQ(heap->owner_of(m.offset), heap->client_id());
    heap->deallocate(m.offset);
    // recv_many: inline bytes straight from the ring, the block record in order among them.
    std::vector<std::string> out;
    while (out.size() < 20)
        rx->recv_many(out, 7, secs(1));
    for (std::uint64_t i = 1; i < 20; ++i)
        EXPECT_EQ(out[i - 1], payload(i % kInlineSlotBytes));
    EXPECT_EQ(out[19], big);
    heap->flush_thread_caches(true);
    EXPECT_EQ(heap->stats().allocations, before);
}

TEST(Channel, try_recv_polling_a_busy_sender_never_mistakes_an_inline_record) {
    auto heap = make_heap(fresh("inline-poll"));
    // Capacity 1: the ring is empty between most records, so the empty -> arrived transition
    // (the window of the bug this guards against) happens on nearly every message.
    auto tx = Channel::open(*heap, "c", 1);
    auto rx = Channel::open(*heap, "c", 1);
    // The count, not a time, bounds the test; the deadline below only guards against a hang.
    constexpr std::uint64_t kN = 50000;
    std::thread sender([&] {
        try {
            for (std::uint64_t i = 0; i < kN; ++i) {
                const std::string p = payload(i % kInlineSlotBytes);
                tx->send_bytes(p.data(), p.size(), RecordKind::Block, {}, secs(30));
            }
        } catch (const std::exception &) {
            // the receiver gave up (closed): PeerDied
        }
    });
    std::uint64_t got = 0;
    std::string error;
    const auto end = std::chrono::steady_clock::now() + 600s;
    unsigned empty_polls = 0;
    try {
        while (got < kN && std::chrono::steady_clock::now() < end) {
            std::optional<ChannelMessage> m = rx->try_recv(); // empty-then-arrived races
            if (!m) {
                // Poll hard, but give the sender the CPU now and then: on a loaded machine
                // (CI runs other suites beside this one) a pure spin starves it.
                if (++empty_polls % 64 == 0)
                    std::this_thread::yield();
                continue;
            }
            EXPECT_EQ(read_block(*heap, *m), payload(got % kInlineSlotBytes));
            heap->deallocate(m->offset);
            ++got;
        }
    } catch (const std::exception &e) {
        error = e.what();
    }
    rx->close(); // a sender still blocked on the full ring leaves (PeerDied)
    sender.join();
    EXPECT_EQ(error, "");
    EXPECT_EQ(got, kN);
}

TEST(Channel, a_try_send_while_another_process_holds_the_heap_lock_is_not_now_not_an_error) {
    // The non-blocking sends (the GIL-held fast path of Python's send) must not turn a heap
    // lock held for a moment by another process into a Timeout of the caller's send: they
    // report "not now" and the caller waits with its own deadline.
    const std::string name = fresh("trylock");
    auto heap = make_heap(name);
    auto tx = Channel::open(*heap, "c", 8);
    auto rx = Channel::open(*heap, "c", 8);
    const std::uint64_t blk = heap->allocate(1000); // before the lock is taken
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    pid_t holder = in_child(name, [&](Heap &h) {
        h.hold_lock_for_tests();
        char c = 1;
        (void)!::write(ready[1], &c, 1);
        for (;;)
            ::pause();
        return 0;
    });
    char c = 0;
    ASSERT_EQ(::read(ready[0], &c, 1), 1);
    const std::string big(4 * kInlineSlotBytes, 'x');
    bool sent = true;
    EXPECT_NO_THROW(sent = tx->try_send_bytes(big.data(), big.size(), RecordKind::Block, {}));
    EXPECT_FALSE(sent);
    EXPECT_NO_THROW(sent = tx->try_send_block(blk, 1000, RecordKind::Array, "meta"));
    EXPECT_FALSE(sent);
    EXPECT_EQ(heap->owner_of(blk), heap->client_id()) << "the block stays the caller's";
    EXPECT_THROW(tx->send_bytes(big.data(), big.size(), RecordKind::Block, {}, secs(0.2)), Timeout);
    ::kill(holder, SIGKILL);
    EXPECT_EQ(wait_child(holder), 128 + SIGKILL);
    // The dead holder's lock is recovered by the next sender.
    EXPECT_TRUE(tx->try_send_bytes(big.data(), big.size(), RecordKind::Block, {}));
    EXPECT_TRUE(tx->try_send_block(blk, 1000, RecordKind::Array, "meta"));
    ChannelMessage a = rx->recv(secs(1));
    EXPECT_EQ(read_block(*heap, a), big);
    heap->deallocate(a.offset);
    ChannelMessage b = rx->recv(secs(1));
    EXPECT_EQ(b.length, 1000u);
    heap->deallocate(b.offset);
    ::close(ready[0]);
    ::close(ready[1]);
}
