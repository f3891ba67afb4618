// An fd and its mapping. Anonymous segments are memfds (they vanish with their last holder);
// named ones live in /dev/shm, are created and attached through NamedSegment (shm/publish.hpp)
// and carry a SegmentHeader (shm/segment_header.hpp) that attach validates first.
//
// Fork: a forked child's copy never removes the parent's name (ForkStamp), and the fd that
// holds an owner lock is renewed in fork children (sync/liveness.hpp), so a dead parent is
// seen as dead while the child lives.
#pragma once

#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/shm/publish.hpp"
#include "ipc_core/shm/reserve.hpp"
#include "ipc_core/shm/segment_header.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <sys/types.h>

namespace shmipc {

class MemorySegment {
  public:
    MemorySegment() = default;
    MemorySegment(MemorySegment &&o) noexcept;
    MemorySegment &operator=(MemorySegment &&o) noexcept;
    MemorySegment(const MemorySegment &) = delete;
    MemorySegment &operator=(const MemorySegment &) = delete;
    ~MemorySegment();

    // memfd_create(MFD_CLOEXEC | MFD_ALLOW_SEALING), space reserved, sealed against resizing.
    static MemorySegment anonymous(std::size_t size, const char *label = "shmipc");
    // Maps an fd we already own (size checked by the caller).
    static MemorySegment map_fd(UniqueFd fd, std::size_t size, bool writable);

    // Shorthands for NamedSegment(name)...create() / attach().
    static MemorySegment create_named(std::string_view name, std::size_t size, mode_t mode,
                                      SegmentKind kind, std::uint32_t layout_version,
                                      bool persistent,
                                      const std::function<void(std::byte *)> &init = {});
    static MemorySegment attach_named(std::string_view name, SegmentKind kind,
                                      std::uint32_t layout_version, std::size_t min_size,
                                      const TrustPolicy &trust = {});

    [[nodiscard]] std::byte *data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] bool writable() const noexcept { return writable_; }
    [[nodiscard]] bool owner() const noexcept { return owner_ && !stamp_.inherited(); }
    [[nodiscard]] const std::string &name() const noexcept { return name_; }
    [[nodiscard]] SegmentHeader *header() const noexcept {
        return reinterpret_cast<SegmentHeader *>(data_);
    }
    // The file's current size (fstat): a peer may have shrunk it. Throws OsError.
    [[nodiscard]] std::size_t file_size() const;
    // A named mapping whose file another process shrank under us: an access beyond the new end
    // was absorbed (shm/sigbus_guard.hpp). One relaxed load.
    [[nodiscard]] bool truncated() const noexcept {
        return truncated_ && truncated_->load(std::memory_order_relaxed);
    }
    // CorruptSegment naming `what` if truncated().
    void check_intact(const char *what) const;

    // mprotect the whole mapping.
    void protect(bool writable);
    // Unmaps and closes; an owner of a non-persistent named object also removes the name (never
    // in a forked child's copy).
    void reset() noexcept;
    // Gives up the name without closing (used when the owner wants the object to persist).
    void disown() noexcept { owner_ = false; }
    // Releases the fd to the caller and unmaps.
    [[nodiscard]] UniqueFd release_fd() noexcept;

  private:
    friend class NamedSegment;
    // After publication: we own the name (and hold its owner lock on our fd).
    void become_owner(const std::string &norm, bool persistent);
    void set_name(const std::string &norm);

    UniqueFd fd_;
    std::byte *data_ = nullptr;
    std::size_t size_ = 0;
    bool writable_ = false;
    bool owner_ = false; // we created it and hold the owner lock
    bool persistent_ = false;
    bool renewed_ = false; // fd_ registered with renew_in_fork_children
    // Set by the SIGBUS guard of a named mapping; on the heap so moves keep its address.
    std::unique_ptr<std::atomic<bool>> truncated_;
    ForkStamp stamp_;
    std::string name_; // normalized, for named objects
    dev_t dev_ = 0;
    ino_t ino_ = 0;
};

// Page size, cached.
[[nodiscard]] std::size_t page_size() noexcept;
[[nodiscard]] inline std::size_t round_up(std::size_t n, std::size_t to) noexcept {
    return (n + to - 1) / to * to;
}

} // namespace shmipc
