// SharedValue: the latest value of something (a string, bytes, an array), by name, with a version
// that increases on every write and a futex that wakes readers waiting for a change.
//
// Layout of the named segment (offsets from its start, every part 64-byte aligned):
//
//   0     SegmentHeader (kind SharedValue)
//   64    ValueControl (192 B): writer mutex | version, current slot, sizes | FutexWord
//   256   ClientTable of writers (kValueMaxWriters slots, sync/client_table.hpp)
//   ...   slot 0: ValueSlot (64 B) | meta (meta_capacity B) | data (capacity B)
//   ...   slot 1: same
//
// ValueControl (offsets from its start): 0 writer RobustMutexWord | 64 version u64 |
// 72 current u32 | 80 capacity u64 | 88 meta_capacity u64 | 96 slot_offset[2] u64 |
// 112 slot_stride u64 | 120 writer_deaths u64 | 128 changed FutexWord | 192 end.
// The sizes and offsets are validated at attach and kept privately; nothing re-reads them.
//
// Writers are serialized by a robust mutex (sync/robust_mutex.hpp): each writing handle registers
// in the value's client table on its first write; a writer that dies holding the mutex is
// detected by its client lock, and the next writer takes over, which is safe because of the two
// slots. A writer always
// fills the slot that is NOT current, so the current slot is never touched while it is current;
// a writer killed mid-write leaves readers on the last complete value. Each slot is also a
// seqlock (its `seq` is odd while a writer fills it), so a reader that raced two writes (the
// second of which reuses its slot) notices and retries instead of returning a torn copy.
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/client_table.hpp"
#include "ipc_core/sync/robust_mutex.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace shmipc {

inline constexpr std::uint32_t kSharedValueLayout = 2; // 2: robust_mutex + writer table
// Handles that have written, at a time.
inline constexpr std::uint32_t kValueMaxWriters = 1024;
// Bytes of type metadata (dtype description, shape) stored next to each value.
inline constexpr std::size_t kValueMetaCapacity = 2048;
// A value is at most this big (a sanity bound on sizes read back from a segment).
inline constexpr std::uint64_t kMaxValueCapacity = std::uint64_t{1} << 40;

// One of the two value slots. Every field but `seq` is only meaningful while `seq` is even and
// unchanged across the read (they are atomics so the race a seqlock tolerates is defined).
struct alignas(64) ValueSlot {
    std::atomic<std::uint64_t> seq;      // odd while a writer fills the slot
    std::atomic<std::uint64_t> version;  // version of the value held
    std::atomic<std::uint64_t> nbytes;   // payload bytes
    std::atomic<std::uint32_t> type;     // user tag; 0 = never written
    std::atomic<std::uint32_t> meta_len; // bytes of meta
};
static_assert(std::is_standard_layout_v<ValueSlot>);
static_assert(sizeof(ValueSlot) == 64 && alignof(ValueSlot) == 64);
static_assert(offsetof(ValueSlot, version) == 8 && offsetof(ValueSlot, nbytes) == 16);
static_assert(offsetof(ValueSlot, type) == 24 && offsetof(ValueSlot, meta_len) == 28);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct ValueControl {
    RobustMutexWord writer;                         // serializes writers
    alignas(64) std::atomic<std::uint64_t> version; // completed writes; never decreases
    std::atomic<std::uint32_t> current;             // slot (0/1) holding the latest complete value
    std::uint32_t reserved0;
    std::uint64_t capacity;        // payload bytes per slot
    std::uint64_t meta_capacity;   // meta bytes per slot
    std::uint64_t slot_offset[2];  // from the segment start
    std::uint64_t slot_stride;     // bytes per slot (header + meta + data)
    std::uint64_t writer_deaths;   // dead writers recovered from (under the mutex)
    alignas(64) FutexWord changed; // notified after every write
};
static_assert(std::is_standard_layout_v<ValueControl>);
static_assert(offsetof(ValueControl, version) == 64 && offsetof(ValueControl, current) == 72);
static_assert(offsetof(ValueControl, capacity) == 80 && offsetof(ValueControl, slot_offset) == 96);
static_assert(offsetof(ValueControl, writer_deaths) == 120);
static_assert(offsetof(ValueControl, changed) == 128 && sizeof(ValueControl) == 192);

// What a reader saw in a slot: everything but the payload, plus the seq to validate the copy.
struct ValueSnapshot {
    std::uint64_t version = 0;
    std::uint64_t seq = 0;
    std::uint64_t nbytes = 0;
    std::uint32_t type = 0;
    std::uint32_t slot = 0;
    std::string meta;
};

class SharedValue {
  public:
    // Creates the named value holding at most `capacity` payload bytes (API.md §0 owner rules).
    static std::unique_ptr<SharedValue> create(std::string_view name, std::size_t capacity,
                                               mode_t mode, bool persistent);
    // Opens an existing one: ENOENT if absent, CorruptSegment if it is not a valid SharedValue.
    static std::unique_ptr<SharedValue> attach(std::string_view name,
                                               const TrustPolicy &trust = {});

    SharedValue(const SharedValue &) = delete;
    SharedValue &operator=(const SharedValue &) = delete;
    // The creator's close removes a non-persistent name; a forked child's copy never does.
    ~SharedValue();

    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] const std::string &name() const noexcept { return seg_.name(); }
    [[nodiscard]] bool owner() const noexcept { return seg_.owner(); }
    [[nodiscard]] bool writable() const noexcept { return seg_.writable(); }
    [[nodiscard]] bool persistent() const noexcept;
    [[nodiscard]] std::uint64_t version() const noexcept;
    [[nodiscard]] std::uint64_t writer_deaths() const noexcept;
    // The futex word notified after every write, for waiting elsewhere (the reactor).
    [[nodiscard]] FutexWord &changed_word() noexcept { return ctl_->changed; }

    // Replaces the value. `type` is the caller's tag (nonzero); `meta` describes the payload
    // (e.g. dtype and shape). A payload over capacity() or meta over kValueMetaCapacity is
    // InvalidArgument and changes nothing. Blocks only while another writer writes (Timeout
    // after `deadline`: a writer may be stopped). Returns the version of this write.
    std::uint64_t write(std::uint32_t type, std::span<const std::byte> meta,
                        std::span<const std::byte> data,
                        const Deadline &deadline = Deadline::never());

    // Read protocol (lock-free for readers): take a snapshot of the current slot's description,
    // copy the payload into a buffer of snapshot.nbytes, then confirm the slot did not change.
    // Both return false when a writer raced the read; the caller retries (see read()).
    [[nodiscard]] bool try_snapshot(ValueSnapshot &out) const;
    [[nodiscard]] bool try_copy(const ValueSnapshot &s, std::byte *dst) const;

    // Consistent read: `alloc(snapshot)` returns a destination for snapshot.nbytes bytes (it may
    // be called again after a retry). After a few lost races the reader takes the writer mutex
    // (when the mapping is writable) so it cannot starve under a stream of large writes.
    template <class Alloc> ValueSnapshot read(Alloc &&alloc) const {
        for (unsigned attempt = 0;; ++attempt) {
            if (attempt >= kLockedReadAfter && writable()) {
                WriterLock lock(*this);
                ValueSnapshot s;
                if (!try_snapshot(s))
                    continue; // cannot happen under the lock; be safe
                std::byte *dst = alloc(s);
                if (try_copy(s, dst))
                    return s;
                continue;
            }
            ValueSnapshot s;
            if (try_snapshot(s)) {
                std::byte *dst = alloc(s);
                if (try_copy(s, dst))
                    return s;
            }
            backoff(attempt);
        }
    }

    // Waits until version() > since. False on timeout; throws Closed after request_close() and
    // whatever check_interrupt() throws (Ctrl-C). Spins briefly, then sleeps on the futex.
    // `spin`: polls before sleeping (cheap when the writer is about to write on another core;
    // wasted CPU on a busy machine, where the futex wake-up is the better deal).
    [[nodiscard]] bool wait(std::uint64_t since, const Deadline &deadline,
                            int spin = kDefaultWaitSpin) const;
    static constexpr int kDefaultWaitSpin =
        0; // measured: spinning doubles latency on our busy 2-core VM

    // Makes waits and lock acquisitions of this handle end with Closed (called by close()
    // while another thread may be blocked in wait()).
    void request_close() noexcept { closing_.store(true, std::memory_order_relaxed); }

    // For tests: current slot and each slot's seq.
    struct DebugState {
        std::uint32_t current;
        std::uint64_t seq[2];
    };
    [[nodiscard]] DebugState debug_state() const noexcept;

    // The writer mutex, taken over from a dead writer. Waits in slices (check_interrupt()).
    class WriterLock {
      public:
        explicit WriterLock(const SharedValue &v, const Deadline &d = Deadline::never());
        ~WriterLock();
        WriterLock(const WriterLock &) = delete;
        WriterLock &operator=(const WriterLock &) = delete;

      private:
        const SharedValue *v_;
    };

  private:
    static constexpr unsigned kLockedReadAfter = 16;
    explicit SharedValue(MemorySegment seg);
    static void backoff(unsigned attempt) noexcept;
    [[nodiscard]] ValueSlot &slot(std::uint32_t i) const noexcept;
    [[nodiscard]] std::byte *meta_ptr(std::uint32_t i) const noexcept;
    [[nodiscard]] std::byte *data_ptr(std::uint32_t i) const noexcept;
    void check_write(std::span<const std::byte> meta, std::span<const std::byte> data) const;
    // Fills the non-current slot and publishes it; returns its version.
    std::uint64_t write_locked(std::uint32_t type, std::span<const std::byte> meta,
                               std::span<const std::byte> data);

    // Registers this handle as a writer (first write; again in a forked child). Returns the
    // lock token.
    std::uint32_t writer_token() const;

    MemorySegment seg_;
    ValueControl *ctl_ = nullptr;
    // Geometry validated at attach (never re-read from shared memory).
    std::size_t capacity_ = 0;
    std::size_t meta_capacity_ = 0;
    std::size_t slot_off_[2] = {0, 0};
    std::atomic<bool> closing_{false};
    // Writer registration (lazy: readers never register).
    mutable std::mutex writer_mu_;
    mutable UniqueFd lock_fd_;
    mutable ClientTable writers_;
    mutable RobustMutex writer_mutex_;
    mutable ForkStamp writer_stamp_;
    mutable bool writer_registered_ = false;
};

// Bytes of the segment for a value of `capacity` payload bytes.
[[nodiscard]] std::size_t shared_value_segment_size(std::size_t capacity);

} // namespace shmipc
