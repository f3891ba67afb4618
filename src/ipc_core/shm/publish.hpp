// The one creation path of every named object (heaps and their extensions, values, queues,
// streams): build the file under a temporary name holding its owner lock, publish it with
// renameat2(RENAME_NOREPLACE) so nobody ever opens it half-built, and replace a stale object of
// that name only if it is ours, not persistent, and its owner lock is free.
//
//   MemorySegment s = NamedSegment("frames")
//                         .kind(SegmentKind::Heap, kHeapLayout)
//                         .size(bytes).mode(0600).persistent(false)
//                         .initializer([&](std::byte *p) { ... })
//                         .create();
//   MemorySegment t = NamedSegment("frames").kind(SegmentKind::Heap, kHeapLayout)
//                         .min_size(n).trust(policy).attach();
#pragma once

#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/shm/open_name.hpp"
#include "ipc_core/shm/segment_header.hpp"

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <sys/types.h>

namespace shmipc {

class MemorySegment;

class NamedSegment {
  public:
    // Normalizes the name (InvalidArgument for a bad one).
    explicit NamedSegment(std::string_view name);

    NamedSegment &kind(SegmentKind k, std::uint32_t layout_version) {
        kind_ = k;
        layout_ = layout_version;
        return *this;
    }
    NamedSegment &size(std::size_t bytes) {
        size_ = bytes;
        return *this;
    }
    NamedSegment &mode(mode_t m) {
        mode_ = m;
        return *this;
    }
    NamedSegment &persistent(bool p) {
        persistent_ = p;
        return *this;
    }
    // Runs on the mapping (header written, magic not yet) before the name becomes visible.
    NamedSegment &initializer(std::function<void(std::byte *)> init) {
        init_ = std::move(init);
        return *this;
    }
    // attach: the smallest file that can be of this kind.
    NamedSegment &min_size(std::size_t bytes) {
        min_size_ = bytes;
        return *this;
    }
    NamedSegment &trust(TrustPolicy t) {
        trust_ = t;
        return *this;
    }

    // Creates and publishes it (API.md §0 owner semantics): OsError EEXIST if a live (or
    // foreign, or persistent) object has the name; InvalidArgument for a mode beyond 0777.
    [[nodiscard]] MemorySegment create() const;
    // Opens and validates it: ENOENT if absent, CorruptSegment if it is not this kind (or
    // truncated, or not a regular file), PermissionError if another user owns it (see trust()).
    [[nodiscard]] MemorySegment attach() const;

    [[nodiscard]] const std::string &name() const noexcept { return norm_; }

  private:
    std::string norm_;
    SegmentKind kind_ = SegmentKind::Heap;
    std::uint32_t layout_ = 0;
    std::size_t size_ = 0;
    std::size_t min_size_ = 0;
    mode_t mode_ = 0600;
    bool persistent_ = false;
    TrustPolicy trust_{};
    std::function<void(std::byte *)> init_;
};

// A fresh temporary path in /dev/shm (".shmipc-tmp-<pid>-...") to build a named object in.
[[nodiscard]] std::string temp_shm_path();

// Creates the temporary file for a named object: exclusive, mode 0600 until fchmod, owner lock
// held on it (from this moment a crash leaves a temporary that `ls --stale` can tell is dead).
[[nodiscard]] UniqueFd create_temporary(const std::string &tmp_path);

// Publishes the file built at `tmp` under the (normalized) name with renameat2
// (RENAME_NOREPLACE). An object in the way is removed only if `replaceable(fd)` says it is ours
// and not persistent and its owner lock is free (taken while removing, so two creators never
// both remove it). OsError EEXIST if a live or foreign object holds the name.
void publish_named(const std::string &tmp, std::string_view norm,
                   const std::function<bool(int)> &replaceable);

// A non-persistent object with a SegmentHeader (the `replaceable` of segments).
[[nodiscard]] bool replaceable_segment(int fd);

// Removes a name (force-destroy). Returns false if it did not exist.
bool unlink_named(std::string_view name);

// Permission bits only: InvalidArgument naming the mode otherwise.
void check_mode(mode_t mode);

} // namespace shmipc
