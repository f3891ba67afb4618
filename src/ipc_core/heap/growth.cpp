// Extension segments: a named heap grows (up to max_size) by segments NAME.1, NAME.2, ...
// created by whichever process needs the room; others map them on first use
// (Segments::map_extension). The owner of the primary name removes them with it, so growth stops
// once that name is gone or replaced: nobody would remove the derived names then.
#include "ipc_core/heap/segments.hpp"

#include "ipc_core/shm/shm_name.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shmipc {

bool Segments::primary_name_is_ours() const {
    struct stat mine {
    }, named{};
    if (::fstat(primary_fd_, &mine) != 0)
        return false;
    if (::stat(shm_path(name_).c_str(), &named) != 0)
        return false;
    return mine.st_ino == named.st_ino && mine.st_dev == named.st_dev;
}

std::uint64_t Segments::grow(std::uint64_t units, std::uint64_t align, bool *blocked) {
    const std::uint32_t count = map_all(); // the total below counts every segment
    if (anonymous() || count >= kMaxSegments)
        return 0;
    const std::uint64_t total = mapped_bytes();
    const std::uint64_t header = first_header_at(sizeof(SegmentHeader));
    // Room for the block, its alignment padding and one unit of slack, in whole pages.
    const std::uint64_t need =
        round_up(header + (units + align / kHeapUnit) * kHeapUnit + kHeapUnit, page_size());
    if (total + need > max_size_)
        return 0;
    if (!primary_name_is_ours()) {
        *blocked = true;
        return 0;
    }
    // At least the primary's size, so a heap that grows often does not make tiny segments.
    std::uint64_t want = std::max<std::uint64_t>(need, geom_[0].size);
    want = std::min<std::uint64_t>({want, max_size_ - total, kSegmentOffsetMask});
    want = want / page_size() * page_size();
    const std::uint64_t end = header + (want - header) / kHeapUnit * kHeapUnit;
    MemorySegment seg = MemorySegment::create_named(
        extension_name(name_, count), want, mode_, SegmentKind::HeapExtension, kHeapLayout,
        persistent_, [&](std::byte *data) {
            auto *b = reinterpret_cast<BlockHeader *>(data + header);
            b->prev_units = 0;
            b->word.store(make_word((end - header) / kHeapUnit, kOwnerNone, kFree),
                          std::memory_order_relaxed);
        });
    seg.disown(); // the heap's owner removes extension names, not the grower
    {
        std::lock_guard g(map_mu_);
        std::byte *b = seg.data();
        extensions_.resize(std::max<std::size_t>(extensions_.size(), count));
        extensions_[count - 1] = std::move(seg);
        publish(count, b, SegmentGeometry{want, header, end}); // ours: no need to re-validate
    }
    ctl_->segs[count] = SegmentInfo{want, header, end};
    // SYNC POINT: release, pairs with the acquire load of segment_count in shared_count(): the
    // SegmentInfo and the file exist before anyone can see the new count.
    ctl_->segment_count.store(count + 1, std::memory_order_release);
    return make_off(count, header);
}

void Segments::unlink_extensions() noexcept {
    if (anonymous() || ctl_ == nullptr)
        return;
    // Bounded by kMaxSegments even if the shared count is garbage.
    // SYNC POINT: acquire, pairs with the release store in grow(): every name it counts exists.
    std::uint32_t n = ctl_->segment_count.load(std::memory_order_acquire);
    n = std::min<std::uint32_t>(n, kMaxSegments);
    for (std::uint32_t i = 1; i < n; ++i) {
        try {
            unlink_named(extension_name(name_, i));
        } catch (...) {
        }
    }
}

void Segments::remove_leftover_extensions(const std::string &base) {
    for (std::size_t i = 1; i < kMaxSegments; ++i) {
        std::string n = extension_name(base, i);
        if (n.size() > kMaxNameLength + 1)
            break;
        std::string path = shm_path(n);
        UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
        if (!fd)
            continue;
        SegmentHeader h{};
        if (::pread(fd.get(), &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
            h.magic == kSegmentMagic &&
            h.kind == static_cast<std::uint32_t>(SegmentKind::HeapExtension))
            ::unlink(path.c_str());
    }
}

} // namespace shmipc
