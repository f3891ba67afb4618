// Message queues of bytes (API.md section 5), many producers and consumers in any processes.
// The same queue as Python's shmipc.MessageQueue: what C++ puts, Python's q.get_bytes() gets,
// and what Python's q.put_bytes(b) puts, get() here returns (q.put(obj) puts a pickle: get()
// returns the pickle's bytes).
//
//   auto q = shmipc::MessageQueue::attach("jobs");
//   q.put("job 1");                                   // Python: q.get_bytes() == b"job 1"
//   std::vector<std::byte> m = q.get(std::chrono::seconds(1));
#pragma once

#include "shmipc/config.hpp"
#include "shmipc/errors.hpp"

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace shmipc {
inline namespace v1 {

struct QueueOptions {
    std::size_t maxsize = 1024;             // messages
    std::size_t max_message_size = 1 << 16; // bytes
    mode_t mode = 0600;
    bool persistent = false;
};

class MessageQueue {
  public:
    static MessageQueue create(std::string_view name, const QueueOptions &options = {});
    static MessageQueue attach(std::string_view name);
    MessageQueue(MessageQueue &&) noexcept;
    MessageQueue &operator=(MessageQueue &&) noexcept;
    ~MessageQueue();

    // Waits for room; Timeout if none in time (Python's queue.Full), InvalidArgument for a
    // message larger than max_message_size().
    void put(std::span<const std::byte> message, WaitFor timeout = std::nullopt);
    void put(std::string_view message, WaitFor timeout = std::nullopt);
    // Never waits: false if the queue is full.
    [[nodiscard]] bool try_put(std::span<const std::byte> message);
    // Waits for a message; Timeout if none in time (Python's queue.Empty).
    [[nodiscard]] std::vector<std::byte> get(WaitFor timeout = std::nullopt);
    [[nodiscard]] std::string get_string(WaitFor timeout = std::nullopt);
    // Never waits: nullopt if empty.
    [[nodiscard]] std::optional<std::vector<std::byte>> try_get();

    [[nodiscard]] std::size_t size() const;
    [[nodiscard]] bool empty() const { return size() == 0; }
    [[nodiscard]] std::size_t maxsize() const;
    [[nodiscard]] std::size_t max_message_size() const;
    [[nodiscard]] const std::string &name() const;
    void close() noexcept;
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    MessageQueue() = default;
    std::unique_ptr<Impl> impl_;
    friend struct ApiAccess;
};

} // namespace v1
} // namespace shmipc
