// Topics: one publisher, many subscribers, zero copy (API.md section 8). Layout and the memory
// model of samples: topic/topic_layout.hpp.
//
//   auto pub = TopicPublisher::open(heap, "camera0", TopicOptions{.capacity = 8, .history = 1});
//   pub->publish_bytes(p, n, {}, Deadline(1.0));      // or publish_block(off, len, ...)
//   auto sub = TopicSubscriber::open(heap, "camera0");
//   TopicSample s = sub->recv(Deadline(1.0));         // s.data: a block every subscriber shares
//   ... read heap.to_ptr(s.data) ...
//   sub->release(s);                                  // drops this subscriber's reference
//
// Handles are thread-safe (one mutex per handle serializes its calls). A handle copied into a
// forked child is not the child's: a subscriber re-subscribes (a new slot, history included) on
// its first use there, a publisher claims the role anew (ChannelBusy while the parent's is alive).
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/topic/topic_layout.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmipc {

struct TopicOptions {
    std::uint32_t capacity = 8; // pending samples per subscriber
    std::uint32_t history = 0;  // earlier samples a late joiner gets
    Overflow overflow = Overflow::Block;
    std::uint32_t max_subscribers = 64;
    std::uint32_t max_held = 0; // 0: max(64, capacity + history)
};

struct TopicInfo {
    std::string name;
    std::uint32_t capacity = 0;
    std::uint32_t history = 0;
    Overflow overflow = Overflow::Block;
    std::uint32_t max_subscribers = 0;
    std::uint32_t subscribers = 0; // live ones
    bool publisher_alive = false;
    bool closed = false;         // the publisher ended the stream
    std::uint64_t published = 0; // head
};

// A received sample: `data`/`length` is the shared block (read it, never write it); `header`
// and `held_index` identify this subscriber's reference (give them back to release()).
struct TopicSample {
    std::uint64_t header = 0;
    std::uint32_t held_index = 0;
    std::uint64_t data = 0;
    std::uint64_t length = 0;
    std::uint64_t seq = 0;
    std::string meta;
};

namespace topic_detail {
class TopicRef; // the shared part of both handles (topic_ref.hpp)
}

class TopicPublisher {
  public:
    // Opens the topic `name` of `heap`, creating it with `opt` if absent (an existing topic keeps
    // the options it was created with), and claims the publisher role. ChannelBusy if a live
    // publisher exists; OsError EPIPE if its publisher closed the stream (remove() the topic to
    // reuse the name); InvalidArgument for bad options or a name of another kind;
    // CorruptSegment for an invalid topic.
    static std::unique_ptr<TopicPublisher> open(Heap &heap, std::string_view name,
                                                const TopicOptions &opt);
    ~TopicPublisher(); // without close(): subscribers drain, then PeerDied
    TopicPublisher(const TopicPublisher &) = delete;
    TopicPublisher &operator=(const TopicPublisher &) = delete;

    // Publishes the block at `off` (owned by this heap client, `len` meaningful bytes, `meta` of
    // at most kTopicMaxMeta bytes travels with it): every subscriber gets this same block. Waits
    // while a live subscriber's queue is full (overflow=block): Timeout then, the block stays the
    // caller's, as on every failure.
    void publish_block(std::uint64_t off, std::uint64_t len, std::string_view meta,
                       const Deadline &deadline);
    // Never waits: false if a subscriber's queue is full (overflow=block) or another thread is
    // inside this handle.
    [[nodiscard]] bool try_publish_block(std::uint64_t off, std::uint64_t len,
                                         std::string_view meta);
    // Copies n bytes into a new block and publishes it.
    void publish_bytes(const void *data, std::size_t n, std::string_view meta,
                       const Deadline &deadline);
    [[nodiscard]] bool try_publish_bytes(const void *data, std::size_t n, std::string_view meta);
    // True if a publish would not wait now (overflow=drop_oldest: always).
    [[nodiscard]] bool ready();
    // Waits until a publish would not wait (then a publish with a zero deadline succeeds, unless
    // a subscriber with a full history joins meanwhile). Timeout.
    void wait_ready(const Deadline &deadline);
    // End of stream (idempotent): subscribers drain, then EndOfStream.
    void close();
    // Forgets the role without touching the heap (its handle is gone already).
    void abandon() noexcept;

    [[nodiscard]] std::uint32_t subscribers() const; // live subscribers now
    [[nodiscard]] std::uint64_t published() const;   // samples published (head)
    [[nodiscard]] const std::string &name() const noexcept;
    [[nodiscard]] const TopicGeometry &geometry() const noexcept;
    [[nodiscard]] bool closed() const noexcept { return closed_; }
    void set_spin(std::chrono::nanoseconds s) noexcept { spin_ns_.store(s.count()); }

  private:
    explicit TopicPublisher(std::unique_ptr<topic_detail::TopicRef> t);
    void claim();
    void ensure_role();
    bool publish_locked(std::uint64_t off, std::uint64_t len, std::string_view meta,
                        const Deadline *deadline);
    std::uint64_t make_header(std::uint64_t off, std::uint64_t len, std::string_view meta,
                              const Deadline &deadline);
    bool has_room();
    void wait_for_room(const Deadline &deadline);

    std::unique_ptr<topic_detail::TopicRef> t_;
    std::uint32_t token_ = 0;
    ForkStamp stamp_;
    bool claimed_ = false;
    bool closed_ = false;
    Clock::time_point next_reap_{};
    std::atomic<std::int64_t> spin_ns_{50'000};
    std::mutex mu_;
};

class TopicSubscriber {
  public:
    // Subscribes to the existing topic `name` (OsError ENOENT if absent). It gets every sample
    // published from now on plus up to `history` earlier ones. LimitReached (naming
    // max_subscribers) when every slot is taken by a live subscriber.
    static std::unique_ptr<TopicSubscriber> open(Heap &heap, std::string_view name);
    ~TopicSubscriber(); // releases what it still holds and frees its slot
    TopicSubscriber(const TopicSubscriber &) = delete;
    TopicSubscriber &operator=(const TopicSubscriber &) = delete;

    // The next sample (this subscriber now holds a reference: release() it). Waits while none is
    // pending: Timeout; EndOfStream once the publisher closed and all was received; PeerDied once
    // the publisher died (or left without closing) and all was received. LimitReached if it
    // already holds max_held samples.
    [[nodiscard]] TopicSample recv(const Deadline &deadline);
    // Never waits: nullopt if nothing is pending (or another thread is inside this handle);
    // EndOfStream / PeerDied as recv.
    [[nodiscard]] std::optional<TopicSample> try_recv();
    // Copies the next sample out through `fn(ctx, data, n)` without keeping a reference (small
    // samples are copied with the topic lock held, so no reference is taken at all). `fn` may
    // throw; the sample is then not consumed. try_: false if nothing is pending.
    using SinkFn = void (*)(void *ctx, const void *data, std::size_t n);
    [[nodiscard]] bool try_recv_copy(SinkFn fn, void *ctx);
    void recv_copy(const Deadline &deadline, SinkFn fn, void *ctx);
    // Drops the reference of a received sample (the last one frees its blocks). Safe after
    // close(); a no-op in a forked child for a sample its parent received.
    void release(const TopicSample &s);
    void release(std::uint64_t header, std::uint32_t held_index, const ForkStamp &taken_in);
    // Waits until recv would return at once (a sample, end of stream, dead publisher): true, or
    // false at the deadline.
    [[nodiscard]] bool poll(const Deadline &deadline);
    [[nodiscard]] std::uint64_t pending() const; // samples waiting now
    // For event loops (sync/reactor): the word every publish and close notifies, whether recv
    // would return at once (a sample pending, the stream ended, the publisher dead), and
    // whether the publisher died. Claim nothing, never wait.
    [[nodiscard]] FutexWord &data_word() const noexcept;
    [[nodiscard]] bool recv_ready() const;
    [[nodiscard]] bool publisher_dead() const;
    [[nodiscard]] std::uint64_t missed() const; // dropped for this subscriber so far
    // Stops receiving (idempotent). Samples it holds stay valid until released.
    void close();
    void abandon() noexcept;
    [[nodiscard]] const void *sample_ptr(const TopicSample &s) const;

    [[nodiscard]] const std::string &name() const noexcept;
    [[nodiscard]] const TopicGeometry &geometry() const noexcept;
    [[nodiscard]] bool closed() const noexcept { return closed_; }
    [[nodiscard]] std::uint32_t index() const noexcept { return index_; }
    void set_spin(std::chrono::nanoseconds s) noexcept { spin_ns_.store(s.count()); }

  private:
    explicit TopicSubscriber(std::unique_ptr<topic_detail::TopicRef> t);
    void subscribe();
    void ensure_subscribed();
    std::optional<TopicSample> take_locked();
    // With the lock: the sample at the cursor, checked; nullopt if none.
    struct Located {
        std::uint64_t cursor, header, data, length;
        SampleHeader *h;
    };
    std::optional<Located> locate_locked();
    bool copy_out(bool wait, const Deadline *deadline, SinkFn fn, void *ctx);
    void release_noexcept(const TopicSample &s) noexcept;
    void wait_for_sample(const Deadline &deadline);
    [[noreturn]] void end_of_stream(std::uint32_t st);

    std::unique_ptr<topic_detail::TopicRef> t_;
    std::uint32_t index_ = 0;
    std::uint32_t token_ = 0;
    std::uint64_t missed_seen_ = 0;
    ForkStamp stamp_;
    std::atomic<bool> subscribed_{false};
    bool closed_ = false;
    std::atomic<bool> closing_{false}; // close() asks a waiting thread of this handle to leave
    std::atomic<std::int64_t> spin_ns_{50'000};
    std::mutex mu_;
};

// Every topic of the heap (heap.topics()). Reaps dead subscribers on the way.
std::vector<TopicInfo> list_topics(Heap &heap);
// Removes the topic `name` once its publisher and subscribers are all closed or dead: frees its
// samples and its control block. False if there is no topic of that name; ChannelBusy if an
// endpoint is alive.
bool remove_topic(Heap &heap, std::string_view name, const Deadline &deadline = Deadline(10.0));

} // namespace shmipc
