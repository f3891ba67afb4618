// Channels (channel.hpp): opening or creating a channel in its heap, the geometry of its control
// block (ring, inline buffers) validated at attach, and the heap's channels as a whole: list
// (heap.channels()) and remove. Roles and liveness: channel_endpoint.cpp; sending:
// channel_send.cpp; receiving: channel_recv.cpp.
#include "ipc_core/channel/channel_detail.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shmipc {

using channel_detail::endpoint_alive_at;
using channel_detail::lock_index_for;
using channel_detail::role_name;

namespace {

std::uint32_t inline_bytes_for(std::uint64_t capacity) {
    return std::bit_ceil(capacity) <= kMaxInlineSlots ? kInlineSlotBytes : 0;
}

// Bytes from the control block to the inline buffers.
std::size_t inline_offset(std::uint64_t capacity) {
    return sizeof(ChannelControl) - sizeof(SpscRingControl) + spsc_ring_bytes(capacity);
}

std::size_t control_bytes(std::uint64_t capacity) {
    return inline_offset(capacity) + std::bit_ceil(capacity) * inline_bytes_for(capacity);
}

ChannelControl *validate_control(void *p, std::size_t avail, std::string_view name) {
    auto *c = static_cast<ChannelControl *>(p);
    if (avail < sizeof(ChannelControl) || c->magic != kChannelMagic ||
        c->layout_version != kChannelLayoutVersion)
        throw CorruptSegment("channel '" + std::string(name) + "' has a corrupt control block");
    spsc_ring_validate(&c->ring, avail - (sizeof(ChannelControl) - sizeof(SpscRingControl)));
    const std::uint64_t cap = c->ring.capacity;
    if (c->inline_bytes != inline_bytes_for(cap) || control_bytes(cap) > avail)
        throw CorruptSegment("channel '" + std::string(name) + "' has a corrupt inline area");
    return c;
}

} // namespace

std::unique_ptr<Channel> Channel::open(Heap &heap, std::string_view name, std::uint64_t capacity) {
    if (name.empty() || name.size() > kMaxNamedLength)
        throw InvalidArgument("a channel name is 1.." + std::to_string(kMaxNamedLength) +
                              " bytes, got " + std::to_string(name.size()));
    const std::size_t bytes = control_bytes(capacity); // validates capacity
    auto existing = [&]() -> std::optional<NamedInfo> {
        auto info = heap.find_named(name);
        if (info && info->kind != kNamedChannel)
            throw InvalidArgument("'" + std::string(name) +
                                  "' names another kind of object in this heap, not a channel");
        return info;
    };
    std::uint64_t off = 0;
    if (auto info = existing()) {
        off = info->offset;
    } else {
        try {
            off = heap.find_or_create_named(
                          name, bytes,
                          [&](void *p) {
                              std::memset(p, 0, sizeof(ChannelControl) - sizeof(SpscRingControl));
                              auto *c = static_cast<ChannelControl *>(p);
                              c->magic = kChannelMagic;
                              c->layout_version = kChannelLayoutVersion;
                              c->lock_index = lock_index_for(heap.to_offset(p));
                              c->inline_bytes = inline_bytes_for(capacity);
                              spsc_ring_init(&c->ring, capacity);
                          },
                          kNamedChannel)
                      .first;
        } catch (const InvalidArgument &) {
            // Another process created it first with a smaller capacity: use theirs.
            auto theirs = existing();
            if (!theirs)
                throw;
            off = theirs->offset;
        }
    }
    auto *ctl = validate_control(heap.to_ptr(off), heap.block_capacity(off), name);
    return std::unique_ptr<Channel>(new Channel(heap, std::string(name), off, ctl));
}

Channel::Channel(Heap &heap, std::string name, std::uint64_t offset, ChannelControl *ctl)
    : heap_(heap), name_(std::move(name)), offset_(offset), ctl_(ctl),
      geometry_(spsc_ring_geometry(&ctl->ring)),
      inline_(reinterpret_cast<std::byte *>(ctl) + inline_offset(geometry_.capacity)),
      inline_bytes_(inline_bytes_for(geometry_.capacity)) {}

Channel::~Channel() {
    // Dropped without close(): like a process that exits without closing its end of a pipe.
    release(/*departed=*/true);
}

void Channel::check_open() const {
    if (closed_)
        throw Closed("channel '" + name_ + "' is closed");
}

std::vector<ChannelInfo> Channel::list(Heap &heap) {
    std::vector<ChannelInfo> out;
    for (const NamedInfo &n : heap.list_named(kNamedChannel)) {
        ChannelControl *c = nullptr;
        try {
            c = validate_control(heap.to_ptr(n.offset), heap.block_capacity(n.offset), n.name);
        } catch (const std::exception &) {
            continue; // not ours to report: a corrupt entry is an error for whoever opens it
        }
        ChannelInfo info;
        info.name = n.name;
        info.capacity = c->ring.capacity;
        info.queued = std::min<std::uint64_t>(c->ring.size_approx(), info.capacity);
        info.sender_alive = endpoint_alive_at(heap, n.offset, c, ChannelRole::Sender);
        info.receiver_alive = endpoint_alive_at(heap, n.offset, c, ChannelRole::Receiver);
        // SYNC POINT: acquire, pairs with the release store of closed in SpscProducer::close().
        info.closed = c->ring.closed.load(std::memory_order_acquire) != 0;
        out.push_back(std::move(info));
    }
    return out;
}

bool Channel::remove(Heap &heap, std::string_view name, const Deadline &deadline) {
    auto info = heap.find_named(name);
    if (!info)
        return false;
    if (info->kind != kNamedChannel)
        throw InvalidArgument("'" + std::string(name) + "' is not a channel");
    ChannelControl *c =
        validate_control(heap.to_ptr(info->offset), heap.block_capacity(info->offset), name);
    for (ChannelRole r : {ChannelRole::Sender, ChannelRole::Receiver})
        if (endpoint_alive_at(heap, info->offset, c, r))
            throw ChannelBusy("channel '" + std::string(name) + "' still has a live " +
                              role_name(r) + " (close it first)");
    auto free_held = [&](std::uint64_t off) {
        try {
            if (off && heap.try_transfer(off, kOwnerHeld, heap.client_id()))
                heap.deallocate(off);
        } catch (const InvalidArgument &) {
            // not a live block (scribbled record): nothing to free
        }
    };
    const RingGeometry g = spsc_ring_geometry(&c->ring);
    SpscConsumer consumer(&c->ring, g);
    RingRecord rec{};
    for (std::uint64_t n = 0; n < g.capacity && consumer.try_pop(rec); ++n) {
        free_held(rec.offset);
        free_held(rec.aux);
    }
    free_held(c->inflight_block.exchange(0));
    free_held(c->inflight_meta.exchange(0));
    return heap.remove_named(name, deadline);
}

} // namespace shmipc
