#include "ipc_core/heap/layout.hpp"

#include <cstring>
#include <new>

namespace shmipc {

void format_control(std::byte *segment, std::size_t size, const HeapFormat &format) {
    auto *ctl = new (segment + sizeof(SegmentHeader)) HeapControl;
    std::memset(static_cast<void *>(ctl), 0, sizeof(HeapControl));
    ctl->magic = kHeapControlMagic;
    ctl->layout = kHeapLayout;
    ctl->mode = format.mode & 0777;
    ctl->max_size = format.max_size < size ? size : format.max_size;
    ctl->persistent = format.persistent ? 1 : 0;
    ctl->anonymous = format.anonymous ? 1 : 0;
    ClientTable::init(&ctl->client_header, kMaxClients);
    const std::uint64_t begin = first_header_at(kControlEnd);
    const std::uint64_t end = begin + (size - begin) / kHeapUnit * kHeapUnit;
    ctl->segs[0] = SegmentInfo{size, begin, end};
    auto *b = reinterpret_cast<BlockHeader *>(segment + begin);
    b->prev_units = 0;
    b->word.store(make_word((end - begin) / kHeapUnit, kOwnerNone, kFree),
                  std::memory_order_relaxed);
    auto *l = reinterpret_cast<FreeLinks *>(segment + begin + kBlockHeaderSize);
    l->next = l->prev = 0;
    ctl->bins[bin_of((end - begin) / kHeapUnit)] = begin; // segment 0: offset == local
    // SYNC POINT: release, pairs with the acquire load of segment_count in
    // Segments::shared_count() (attach in other processes is ordered again by the publication of
    // the segment itself).
    ctl->segment_count.store(1, std::memory_order_release);
}

} // namespace shmipc
