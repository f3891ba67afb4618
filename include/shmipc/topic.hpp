// Topics from C++: one publisher, many subscribers, zero copy (API.md section 8), on the same
// objects as Python's heap.publisher()/heap.subscriber(), both directions.
//
//   auto heap = shmipc::Heap::attach("frames");
//   auto pub = shmipc::Publisher::open(heap, "camera0", {.capacity = 8, .history = 1});
//   pub.publish(std::move(block));            // zero copy: every subscriber gets this block
//   auto sub = shmipc::Subscriber::open(heap, "camera0");
//   shmipc::Sample s = sub.recv(1s);          // read-only, shared; released when destroyed
#pragma once

#include "shmipc/array.hpp"
#include "shmipc/config.hpp"
#include "shmipc/heap.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmipc {
inline namespace v1 {

struct TopicOptions {
    std::uint32_t capacity = 8; // pending samples per subscriber
    std::uint32_t history = 0;  // earlier samples a late joiner gets
    bool drop_oldest = false;   // false: publish waits while a subscriber is full
    std::uint32_t max_subscribers = 64;
};

// A received sample: the block every subscriber shares, read-only. Destroying it (or release())
// gives this subscriber's reference back; the last reference frees the block.
class Sample {
  public:
    Sample() noexcept;
    Sample(Sample &&) noexcept;
    Sample &operator=(Sample &&) noexcept;
    ~Sample();

    [[nodiscard]] std::span<const std::byte> bytes() const; // Closed once released
    [[nodiscard]] std::uint64_t seq() const noexcept;       // 0, 1, 2... per topic
    // An array sample (Python published an ndarray): its description; else 1-D uint8.
    [[nodiscard]] bool is_array() const noexcept;
    [[nodiscard]] const ArrayInfo &info() const noexcept;
    template <class T> [[nodiscard]] std::span<const T> as() const {
        return array_cast<T>(bytes(), info());
    }
    [[nodiscard]] bool released() const noexcept;
    void release() noexcept;

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
    friend struct ApiAccess;
};

// The one publisher of a topic (move-only). open() creates the topic on first use; a second
// live publisher anywhere is ChannelBusy. close() ends the stream (subscribers drain, then
// EndOfStream); destroyed without close() (or killed), subscribers get PeerDied after draining.
class Publisher {
  public:
    static Publisher open(Heap &heap, std::string_view name, const TopicOptions &options = {});
    Publisher(Publisher &&) noexcept;
    Publisher &operator=(Publisher &&) noexcept;
    ~Publisher();

    // Zero copy: `blk` (a block of this heap) goes to every subscriber and is released here.
    // Waits while a live subscriber is full (unless drop_oldest): Timeout, the block stays ours.
    void publish(Block &&blk, WaitFor timeout = std::nullopt);
    void publish(std::span<const std::byte> bytes, WaitFor timeout = std::nullopt); // one copy
    void publish(std::string_view bytes, WaitFor timeout = std::nullopt);
    // An array sample: Python's sub.recv_array() gets an ndarray of info's dtype and shape.
    void publish_array(std::span<const std::byte> bytes, const ArrayInfo &info,
                       WaitFor timeout = std::nullopt);
    template <class T>
    void publish_array(std::span<const T> data, std::vector<std::int64_t> shape,
                       WaitFor timeout = std::nullopt) {
        publish_array(std::as_bytes(data), array_info<T>(std::move(shape)), timeout);
    }
    [[nodiscard]] std::uint32_t subscribers() const; // live subscribers now
    [[nodiscard]] const std::string &name() const;
    void close(); // end of stream; idempotent
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    Publisher() = default;
    std::unique_ptr<Impl> impl_;
};

// One subscriber (move-only): every sample published after open() plus up to `history` earlier
// ones. LimitReached when max_subscribers live subscribers exist.
class Subscriber {
  public:
    static Subscriber open(Heap &heap, std::string_view name);
    Subscriber(Subscriber &&) noexcept;
    Subscriber &operator=(Subscriber &&) noexcept;
    ~Subscriber();

    // Waits while nothing is pending: Timeout; EndOfStream after the publisher's close();
    // PeerDied when the publisher died (or left without closing) and all was received.
    [[nodiscard]] Sample recv(WaitFor timeout = std::nullopt);
    // True when recv would return at once.
    [[nodiscard]] bool poll(WaitFor timeout = std::chrono::nanoseconds(0));
    [[nodiscard]] std::size_t pending() const;
    [[nodiscard]] std::uint64_t missed() const; // dropped for this subscriber (drop_oldest)
    [[nodiscard]] const std::string &name() const;
    void close(); // stops receiving; samples it holds stay valid until released
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    Subscriber() = default;
    std::shared_ptr<Impl> impl_;
};

} // namespace v1
} // namespace shmipc
