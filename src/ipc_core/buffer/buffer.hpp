// A memfd-backed buffer with move semantics, plus the per-process pool that makes repeated
// hand-offs free of page faults and munmap.
//
// Ownership: the process that holds a writable Buffer owns its bytes. send() moves them: the
// sender's mapping becomes read-only (mprotect), the receiver's is writable. A sealed buffer
// (F_SEAL_WRITE) is immutable for everyone and may be sent any number of times.
//
// Exports (Python buffer-protocol views) are counted here so that close() never unmaps memory
// a view still uses, and send() can refuse while writable views exist.
#pragma once

#include "ipc_core/shm/memory_segment.hpp"

#include <cstddef>
#include <memory>
#include <string>

namespace shmipc {

inline constexpr std::size_t kHardwareProtectLimit = std::size_t{4} << 20; // bytes

class Buffer {
  public:
    // A fresh buffer of nbytes (zero-filled if `zero`), taken from the pool when it can be.
    static std::unique_ptr<Buffer> create(std::size_t nbytes, bool zero = true);
    // Wraps a received, validated fd; reuses this process's mapping of the same file if the
    // pool still has one (its pages are already mapped: no faults).
    static std::unique_ptr<Buffer> adopt(UniqueFd fd, std::size_t nbytes, std::size_t file_size,
                                         bool write_sealed);
    // Shares an fd (multiprocessing hand-over): the memory is shared, not moved.
    static std::unique_ptr<Buffer> share(UniqueFd fd, std::size_t nbytes);

    ~Buffer();
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;

    [[nodiscard]] std::byte *data() const;
    [[nodiscard]] std::size_t nbytes() const noexcept { return nbytes_; }
    // Logical state: the owner of the bytes may write. The MMU protection follows it for
    // mappings up to kHardwareProtectLimit; above that, changing page protections costs
    // O(pages) per hand-off, so read-only-ness is enforced by the views shmipc hands out.
    [[nodiscard]] bool readonly() const noexcept { return !writable_; }
    [[nodiscard]] bool sealed() const noexcept { return sealed_; }
    [[nodiscard]] bool moved() const noexcept { return moved_; }
    [[nodiscard]] bool closed() const noexcept { return closed_; }
    [[nodiscard]] int fileno() const;
    [[nodiscard]] std::size_t exports() const noexcept { return exports_; }
    [[nodiscard]] std::size_t writable_exports() const noexcept { return writable_exports_; }

    // Buffer protocol bookkeeping. acquire throws BufferBusy for a writable view of a
    // read-only buffer, Closed after close().
    void acquire_export(bool writable);
    void release_export(bool writable) noexcept;
    // A writable export becomes read-only (its holder will no longer write).
    void downgrade_export() noexcept;

    // Marks closed; the mapping goes (back to the pool) once the last export is released.
    void close() noexcept;

    // Immutable from now on, for everyone (F_SEAL_WRITE). BufferBusy if writable views exist
    // here or another process still maps it writable.
    void seal();

    // Before sending: the fd to pass. Refuses (BufferBusy) while more than
    // `allowed_writable_exports` writable views exist, or if the bytes were already moved.
    [[nodiscard]] int prepare_send(std::size_t allowed_writable_exports) const;
    // After a successful send: the sender keeps a read-only mapping (move semantics).
    void mark_sent();
    // Another process maps these bytes too (multiprocessing hand-over, shmipc.ndarray): once
    // closed, the pool must never reuse them for a new buffer of this process.
    void mark_shared() noexcept { shared_ = true; }
    [[nodiscard]] bool shared() const noexcept { return shared_; }

  private:
    Buffer() = default;
    void give_back() noexcept;

    MemorySegment seg_;
    std::size_t nbytes_ = 0;
    bool writable_ = true;
    std::size_t exports_ = 0;
    std::size_t writable_exports_ = 0;
    bool sealed_ = false;
    bool moved_ = false;
    bool shared_ = false; // other processes map the same bytes (never reused for new buffers)
    bool closed_ = false;
    bool released_ = false;
};

// Per-process pool of idle mappings. Entries of buffers this process owned are reused for new
// buffers of the same mapped size; entries of buffers it moved away are only reused when the
// same file comes back (recv), since the receiver may still be using their bytes.
struct PoolStats {
    std::size_t entries;
    std::size_t bytes;
    std::size_t limit_bytes;
    std::size_t hits;
    std::size_t misses;
};
void set_pool_limit(std::size_t bytes);
[[nodiscard]] PoolStats pool_stats();
void clear_pool();

} // namespace shmipc
