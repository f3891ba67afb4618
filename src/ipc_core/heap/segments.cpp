#include "ipc_core/heap/segments.hpp"

#include <cerrno>

namespace shmipc {

namespace {
// A total no real heap reaches (64 segments of 1 TiB): anything larger is garbage.
constexpr std::uint64_t kMaxTotalSize = kMaxSegments * (kSegmentOffsetMask + 1);
} // namespace

std::string extension_name(const std::string &base, std::size_t i) {
    return base + "." + std::to_string(i);
}

HeapControl *Segments::attach_primary(const MemorySegment &primary, bool anonymous,
                                      std::string what) {
    what_ = std::move(what);
    auto fail = [&](const std::string &why) {
        throw CorruptSegment(what_ + " is not a valid shmipc heap: " + why);
    };
    const std::uint64_t size = primary.size();
    const std::uint64_t begin = first_header_at(kControlEnd);
    if (size < begin + kHeapUnit || size > kSegmentOffsetMask)
        fail("segment of " + std::to_string(size) + " bytes");
    auto *ctl = reinterpret_cast<HeapControl *>(primary.data() + sizeof(SegmentHeader));
    if (ctl->magic != kHeapControlMagic)
        fail("bad control magic");
    if (ctl->layout != kHeapLayout)
        fail("layout " + std::to_string(ctl->layout) + ", expected " + std::to_string(kHeapLayout));
    // Each field is read once into a local and only the local is checked and kept.
    const SegmentInfo s0 = ctl->segs[0];
    if (s0.size != size || s0.arena_begin != begin || s0.arena_end > size ||
        s0.arena_end <= s0.arena_begin || (s0.arena_end - s0.arena_begin) % kHeapUnit != 0)
        fail("bad arena bounds of segment 0");
    const std::uint64_t max_size = ctl->max_size;
    if (max_size < size || max_size > kMaxTotalSize || (anonymous && max_size != size))
        fail("bad max_size " + std::to_string(max_size));
    const std::uint32_t mode = ctl->mode, persistent = ctl->persistent, anon = ctl->anonymous;
    if (mode > 0777)
        fail("bad mode");
    if (persistent > 1 || anon != (anonymous ? 1u : 0u))
        fail("bad flags");
    ctl_ = ctl;
    name_ = anonymous ? std::string() : primary.name();
    primary_fd_ = primary.fd();
    max_size_ = max_size;
    mode_ = static_cast<mode_t>(mode);
    persistent_ = persistent != 0;
    (void)shared_count(); // 1..kMaxSegments (1 if anonymous)
    publish(0, primary.data(), SegmentGeometry{size, s0.arena_begin, s0.arena_end});
    return ctl;
}

std::uint32_t Segments::shared_count() const {
    // SYNC POINT: acquire, pairs with the release store of segment_count in grow(): the new
    // segment's SegmentInfo (and its file) exist before.
    const std::uint32_t n = ctl_->segment_count.load(std::memory_order_acquire);
    if (n < 1 || n > kMaxSegments || n < mapped_.load(std::memory_order_relaxed) ||
        (anonymous() && n != 1))
        throw CorruptSegment(what_ + ": its segment count is garbage (" + std::to_string(n) + ")");
    return n;
}

void Segments::publish(std::uint32_t s, std::byte *b, const SegmentGeometry &g) noexcept {
    geom_[s] = g;
    // SYNC POINT: release, pairs with the acquire load in base(): geometry before the base.
    bases_[s].store(b, std::memory_order_release);
    // Contiguous prefix: segments are mapped in order (map_extension maps the ones before).
    // SYNC POINT: release, pairs with the acquire load in mapped().
    mapped_.store(s + 1, std::memory_order_release);
}

void Segments::check_extension(std::uint32_t s, const SegmentInfo &info,
                               std::uint64_t mapped) const {
    const std::uint64_t begin = first_header_at(sizeof(SegmentHeader));
    std::uint64_t total = 0;
    for (std::uint32_t i = 0; i < s; ++i)
        total += geom_[i].size;
    if (info.size != mapped || info.size > kSegmentOffsetMask || info.arena_begin != begin ||
        info.arena_end > info.size || info.arena_end <= info.arena_begin ||
        (info.arena_end - info.arena_begin) % kHeapUnit != 0 || total + info.size > max_size_)
        throw CorruptSegment(what_ + ": bad geometry of extension segment " + std::to_string(s) +
                             " (size " + std::to_string(info.size) + ", arena " +
                             std::to_string(info.arena_begin) + ".." +
                             std::to_string(info.arena_end) + ")");
}

std::byte *Segments::map_extension(std::uint32_t s) {
    std::lock_guard g(map_mu_);
    if (std::byte *b = base(s))
        return b;
    for (std::uint32_t i = mapped_.load(std::memory_order_relaxed); i <= s; ++i) {
        const SegmentInfo info = ctl_->segs[i]; // one read; only this copy is checked and kept
        check_extension(i, info, info.size);    // before attach sizes anything by it
        MemorySegment seg = MemorySegment::attach_named(
            extension_name(name_, i), SegmentKind::HeapExtension, kHeapLayout, info.size, trust_);
        check_extension(i, info, seg.size());
        if (!seg.writable())
            throw OsError(EACCES, what_ + ": extension segment " + std::to_string(i) +
                                      " is not writable for us");
        std::byte *b = seg.data();
        extensions_.resize(std::max<std::size_t>(extensions_.size(), i));
        extensions_[i - 1] = std::move(seg);
        publish(i, b, SegmentGeometry{info.size, info.arena_begin, info.arena_end});
    }
    return base(s);
}

std::byte *Segments::map_for(std::uint64_t off) {
    const std::uint64_t s = seg_of(off);
    if (s >= kMaxSegments || s >= shared_count())
        throw CorruptSegment(what_ + ": offset " + std::to_string(off) +
                             " read from shared memory names no segment");
    return map_extension(static_cast<std::uint32_t>(s));
}

void *Segments::ptr_slow(std::uint64_t off) {
    const std::uint64_t s = seg_of(off);
    if (s >= kMaxSegments)
        throw InvalidArgument("heap offset " + std::to_string(off) + " is out of range");
    std::byte *b = base(s);
    if (b == nullptr) {
        if (s >= shared_count())
            throw InvalidArgument("heap offset " + std::to_string(off) +
                                  " is out of range (no such segment)");
        b = map_extension(static_cast<std::uint32_t>(s));
    }
    if (local_of(off) >= geom_[s].size)
        throw InvalidArgument("heap offset " + std::to_string(off) + " is out of range");
    return b + local_of(off);
}

std::uint32_t Segments::map_all() {
    const std::uint32_t n = shared_count();
    if (n > mapped())
        (void)map_extension(n - 1);
    return n;
}

std::uint64_t Segments::mapped_bytes() const noexcept {
    std::uint64_t total = 0;
    for (std::uint32_t i = 0, n = mapped(); i < n; ++i)
        total += geom_[i].size;
    return total;
}

std::uint64_t Segments::offset_of(const void *p) const {
    auto *c = static_cast<const std::byte *>(p);
    for (std::uint32_t s = 0, n = mapped(); s < n; ++s) {
        std::byte *b = base(s);
        if (b && c >= b && c < b + geom_[s].size)
            return make_off(s, static_cast<std::uint64_t>(c - b));
    }
    throw InvalidArgument("pointer is not inside this heap");
}

void Segments::throw_bad_header(std::uint64_t off) const {
    throw CorruptSegment(what_ + ": offset " + std::to_string(off) +
                         " read from shared memory is not a block of its arena");
}

void Segments::reset() noexcept {
    for (auto &b : bases_)
        b.store(nullptr, std::memory_order_relaxed);
    mapped_.store(0, std::memory_order_relaxed);
    extensions_.clear();
}

} // namespace shmipc
