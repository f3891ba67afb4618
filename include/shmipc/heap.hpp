// Shared heap, blocks and SPSC channels (API.md section 2), on the same names as Python's
// shmipc.Heap / Block / Channel: a C++ sender and a Python receiver (or the reverse) share one
// channel of one heap.
//
//   auto heap = shmipc::Heap::attach("frames");        // made by Python: Heap.create("frames")
//   auto ch = heap.channel("camera0");                 // heap.channel("camera0") in Python
//   ch.send(std::span<const std::byte>(frame));        // Python: blk = ch.recv()
//   shmipc::Block blk = heap.allocate(n);              // or fill a block and move it: zero copy
//   ch.send(std::move(blk));
//   ch.send_array(pixels, shmipc::array_info<std::uint8_t>({1080, 1920, 3}));  // recv_array()
#pragma once

#include "shmipc/array.hpp"
#include "shmipc/config.hpp"
#include "shmipc/errors.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace shmipc {
inline namespace v1 {

class Channel;

struct HeapOptions {
    std::size_t size = std::size_t{64} << 20; // bytes of the primary segment
    std::size_t max_size = 0;                 // total bytes it may grow to (0: no growth)
    mode_t mode = 0600;
    bool persistent = false; // the name survives the owner (until shmipc::unlink)
};

struct HeapStats {
    std::uint64_t size = 0, used = 0, free = 0, largest_free = 0, segments = 0, allocations = 0;
};

// A block of a heap, owned by this process (move-only; RAII: the destructor frees it, as
// Python's Block.release()). It keeps its heap mapped while it lives.
class Block {
  public:
    Block() noexcept;
    Block(Block &&) noexcept;
    Block &operator=(Block &&) noexcept;
    ~Block();

    [[nodiscard]] std::span<std::byte> bytes() const; // Closed once released
    [[nodiscard]] std::size_t nbytes() const noexcept;
    [[nodiscard]] std::uint64_t offset() const noexcept; // in the heap (Python: blk.offset)
    [[nodiscard]] bool released() const noexcept;
    void release() noexcept;
    template <class T> [[nodiscard]] std::span<T> as() const {
        auto b = bytes();
        return {reinterpret_cast<T *>(b.data()), b.size() / sizeof(T)};
    }

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
    friend struct ApiAccess;
};

// One process's handle on a heap (move-only; RAII). Blocks and channels keep the heap mapped,
// so it may be destroyed before them.
class Heap {
  public:
    // A new named heap (OsError EEXIST if a live one exists; a stale one is replaced).
    static Heap create(std::string_view name, const HeapOptions &options = {});
    // An existing named heap: OsError ENOENT if absent, CorruptSegment if it is not a heap.
    static Heap attach(std::string_view name);
    Heap(Heap &&) noexcept;
    Heap &operator=(Heap &&) noexcept;
    ~Heap();

    // A block of at least nbytes (nbytes() == nbytes). OutOfMemory when the heap is full.
    [[nodiscard]] Block allocate(std::size_t nbytes, std::size_t align = 64);
    // The SPSC channel `name` of this heap, created with `capacity` records on first use.
    [[nodiscard]] Channel channel(std::string_view name, std::size_t capacity = 1024);
    [[nodiscard]] HeapStats stats();
    [[nodiscard]] const std::string &name() const;
    // Frees this handle's blocks in the heap's books once the last Block/Channel is gone; the
    // owner of a non-persistent heap removes the name.
    void close() noexcept;
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    Heap() = default;
    std::shared_ptr<Impl> impl_;
    friend struct ApiAccess;
};

// A received record: the block and, for an array record, its description (Python's
// recv_array: `offset` is element 0's position in the block).
struct ArrayBlock {
    Block block;
    ArrayInfo info;
    std::size_t offset = 0;
    [[nodiscard]] std::span<const std::byte> bytes() const {
        return std::span<const std::byte>(block.bytes()).subspan(offset, info.nbytes());
    }
    template <class T> [[nodiscard]] std::span<const T> as() const {
        return array_cast<T>(bytes(), info);
    }
};

// One endpoint of a named SPSC channel (move-only). The first send makes it the sender, the
// first recv the receiver; a second live sender or receiver anywhere is ChannelBusy.
// close() by the sender ends the stream (the receiver drains, then EndOfStream); a sender
// destroyed without close() (or killed) leaves the receiver PeerDied once it drained.
class Channel {
  public:
    Channel(Channel &&) noexcept;
    Channel &operator=(Channel &&) noexcept;
    ~Channel();

    // --- sender: blocks while the channel is full (Timeout, PeerDied, EPIPE after close)
    // Moves a block of this heap: zero copy; `blk` is released here.
    void send(Block &&blk, WaitFor timeout = std::nullopt);
    void send(std::span<const std::byte> bytes, WaitFor timeout = std::nullopt); // one copy
    void send(std::string_view bytes, WaitFor timeout = std::nullopt);
    // An array record: Python's ch.recv_array() gets an ndarray of info's dtype and shape.
    void send_array(std::span<const std::byte> bytes, const ArrayInfo &info,
                    WaitFor timeout = std::nullopt);
    template <class T>
    void send_array(std::span<const T> data, std::vector<std::int64_t> shape,
                    WaitFor timeout = std::nullopt) {
        send_array(std::as_bytes(data), array_info<T>(std::move(shape)), timeout);
    }
    // A block of this heap as an array record (zero copy).
    void send_array(Block &&blk, const ArrayInfo &info, WaitFor timeout = std::nullopt);

    // --- receiver: blocks while empty (Timeout; EndOfStream after the sender's close;
    // PeerDied when the sender died or left without closing).
    [[nodiscard]] Block recv(WaitFor timeout = std::nullopt);
    // An array record (CorruptSegment for a plain bytes record, as Python's recv_array).
    [[nodiscard]] ArrayBlock recv_array(WaitFor timeout = std::nullopt);
    // True when recv would return at once (a record, or the end of the stream).
    [[nodiscard]] bool poll(WaitFor timeout = std::chrono::nanoseconds(0));

    [[nodiscard]] std::size_t size() const;     // records queued (Python: len(ch))
    [[nodiscard]] std::size_t capacity() const; // records
    [[nodiscard]] const std::string &name() const;
    // How long a wait busy-waits before it sleeps on a futex (default 50 µs, as Python's
    // Channel.spin; 0 sleeps at once).
    void set_spin(std::chrono::nanoseconds spin);
    // Sender: end of stream. Receiver: leaves for good. Idempotent.
    void close();
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    Channel() = default;
    std::unique_ptr<Impl> impl_;
    friend struct ApiAccess;
};

} // namespace v1
} // namespace shmipc
