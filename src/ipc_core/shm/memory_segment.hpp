// An fd and its mapping. Anonymous segments are memfds (they vanish with their last holder);
// named ones live in /dev/shm, are published atomically (built under a temporary name, then
// renamed with RENAME_NOREPLACE) and carry a SegmentHeader that attach validates first.
#pragma once

#include "ipc_core/base/unique_fd.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <sys/types.h>

namespace shmipc {

// First bytes of every named shmipc object. Written before publication; validated on attach.
struct SegmentHeader {
    std::uint64_t magic;          // kSegmentMagic
    std::uint32_t kind;           // SegmentKind
    std::uint32_t layout_version; // per kind
    std::uint64_t total_size;     // bytes, the file size at creation
    std::int32_t creator_pid;     // diagnostics only; liveness uses the owner lock byte
    std::uint32_t flags;          // kFlagPersistent
    std::uint64_t created_unix_ns;
    std::uint64_t reserved[3];
};
static_assert(sizeof(SegmentHeader) == 64);
static_assert(std::is_standard_layout_v<SegmentHeader>);

inline constexpr std::uint64_t kSegmentMagic = 0x0131435049484d53ULL; // "SHMIPC1\1" little endian
inline constexpr std::uint32_t kFlagPersistent = 1;

enum class SegmentKind : std::uint32_t {
    Heap = 1,
    HeapExtension = 2,
    SharedValue = 3,
    MessageQueue = 4,
};
[[nodiscard]] const char *kind_name(std::uint32_t kind) noexcept;

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

    // Creates a named object of `size` bytes whose first bytes are a SegmentHeader; `init`
    // runs on the mapping before the name becomes visible. Owner semantics of API.md §0:
    // a live object of that name -> FileExistsError (OsError EEXIST); one whose
    // non-persistent owner died is replaced.
    static MemorySegment create_named(std::string_view name, std::size_t size, mode_t mode,
                                      SegmentKind kind, std::uint32_t layout_version,
                                      bool persistent,
                                      const std::function<void(std::byte *)> &init = {});
    // Opens and validates a named object (CorruptSegment if it is not `kind`, ENOENT if absent).
    static MemorySegment attach_named(std::string_view name, SegmentKind kind,
                                      std::uint32_t layout_version, std::size_t min_size);

    [[nodiscard]] std::byte *data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] bool writable() const noexcept { return writable_; }
    [[nodiscard]] bool owner() const noexcept { return owner_; }
    [[nodiscard]] const std::string &name() const noexcept { return name_; }
    [[nodiscard]] SegmentHeader *header() const noexcept {
        return reinterpret_cast<SegmentHeader *>(data_);
    }

    // mprotect the whole mapping.
    void protect(bool writable);
    // Unmaps and closes; an owner of a non-persistent named object also removes the name.
    void reset() noexcept;
    // Gives up the name without closing (used when the owner wants the object to persist).
    void disown() noexcept { owner_ = false; }
    // Releases the fd to the caller and unmaps.
    [[nodiscard]] UniqueFd release_fd() noexcept;

  private:
    UniqueFd fd_;
    std::byte *data_ = nullptr;
    std::size_t size_ = 0;
    bool writable_ = false;
    bool owner_ = false; // we created it and hold the owner lock
    bool persistent_ = false;
    std::string name_; // normalized, for named objects
    dev_t dev_ = 0;
    ino_t ino_ = 0;
};

// A fresh temporary path in /dev/shm (".shmipc-tmp-<pid>-...") to build a named object in.
[[nodiscard]] std::string temp_shm_path();

// Publishes the file built at `tmp` under the (normalized) name with renameat2
// (RENAME_NOREPLACE), so nobody ever opens it half-built. An object in the way is removed only
// if `replaceable(fd)` says it is ours and not persistent and its owner lock is free (taken
// while removing, so two creators never both remove it). OsError EEXIST if a live
// or foreign object holds the name.
void publish_named(const std::string &tmp, std::string_view norm,
                   const std::function<bool(int)> &replaceable);

// Removes a name (force-destroy). Returns false if it did not exist.
bool unlink_named(std::string_view name);

// Reserves `size` bytes of the fd's file now (a full /dev/shm is an error here, never a SIGBUS
// later). Throws OutOfMemory naming what was asked and what is free.
void reserve_space(int fd, std::size_t size);

// Page size, cached.
[[nodiscard]] std::size_t page_size() noexcept;
[[nodiscard]] inline std::size_t round_up(std::size_t n, std::size_t to) noexcept {
    return (n + to - 1) / to * to;
}

} // namespace shmipc
