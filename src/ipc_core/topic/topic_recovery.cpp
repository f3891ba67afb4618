// Topics (topic.hpp): what a dead process leaves in a topic. Dead subscribers are reaped (their
// references released, their slots freed); a locker that takes the topic lock over from a dead
// holder recounts the references and finishes the operation the holder had announced
// (topic_layout.hpp, "Concurrency").
#include "ipc_core/topic/topic_ref.hpp"

#include <unordered_map>

namespace shmipc {

namespace topic_detail {

// Subscribers whose process is gone: their references are released and their slots freed.
// `only_full`: look only at those that block the publisher (fewer liveness syscalls).
std::uint32_t TopicRef::reap_dead_locked(bool only_full) {
    std::uint32_t n = 0;
    const std::uint64_t head = ctl->head.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < limit(); ++i) {
        SubscriberSlot &s = sub(i);
        // SYNC POINT: acquire, pairs with the release stores of state in subscribe(), close() and
        // clear_subscriber(): the token and cursor stored before it are seen.
        const std::uint32_t st = s.state.load(std::memory_order_acquire);
        if (st == kSubFree)
            continue;
        if (only_full &&
            (st != kSubLive || head - s.cursor.load(std::memory_order_relaxed) < g.capacity))
            continue;
        if (holder_alive(s.token.load(std::memory_order_relaxed)))
            continue;
        clear_subscriber(i);
        ++n;
    }
    if (n)
        // SYNC POINT: futex wake of room after the reaped slots are freed: pairs with the
        // publisher's wait in wait_for_room, whose has_room() re-reads the states (acquire).
        notify_all(ctl->room);
    return n;
}

// After taking the lock over from a dead holder: recount the references from the ring and
// the held lists, and finish the operation the holder had announced.
void TopicRef::recover() {
    std::unordered_map<std::uint64_t, std::uint32_t> refs;
    const std::uint64_t head = ctl->head.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < g.slots; ++i) {
        TopicSlot &s = reinterpret_cast<TopicSlot *>(ctl + 1)[i];
        const std::uint64_t seq = s.seq.load(std::memory_order_relaxed);
        if (seq == kNoSeq)
            continue;
        const std::uint64_t off = s.sample.load(std::memory_order_relaxed);
        const bool in_window = seq < head && head - seq <= g.slots && seq % g.slots == i;
        if (!in_window || !header_ok(off)) {
            s.seq.store(kNoSeq, std::memory_order_relaxed); // half-written or stale
            continue;
        }
        ++refs[off];
    }
    for (std::uint32_t i = 0; i < g.max_subscribers; ++i) {
        SubscriberSlot &s = sub(i);
        if (s.state.load(std::memory_order_relaxed) == kSubFree)
            continue;
        std::uint32_t count = 0;
        for (std::uint32_t k = 0; k < g.max_held; ++k) {
            const std::uint64_t off = s.held()[k].load(std::memory_order_relaxed);
            if (!off)
                continue;
            if (!header_ok(off)) {
                s.held()[k].store(0, std::memory_order_relaxed);
                continue;
            }
            ++refs[off];
            ++count;
        }
        s.held_count.store(count, std::memory_order_relaxed);
    }
    for (auto &[off, n] : refs)
        static_cast<SampleHeader *>(heap.to_ptr(off))->refs.store(n, std::memory_order_relaxed);
    for (auto *w : {&ctl->inflight, &ctl->evicting, &ctl->freeing}) {
        const std::uint64_t off = w->exchange(0, std::memory_order_relaxed);
        if (off && !refs.count(off))
            finish_free(off);
    }
}

} // namespace topic_detail

} // namespace shmipc
