// Topics (topic.hpp): TopicPublisher, the one publisher of a topic: claiming the role (and
// re-claiming it in a fork child), waiting for room, publishing a block or a copy (the overflow
// policy applied with the topic lock held), closing the stream.
#include "ipc_core/topic/topic_ref.hpp"

#include "ipc_core/base/bulk_copy.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/testing/crash_point.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

namespace shmipc {

using topic_detail::corrupt;
using topic_detail::kReapEvery;
using topic_detail::kReleaseLockWait;
using topic_detail::spin_policy;
using topic_detail::TopicRef;

namespace {

// The overflow step of a publish (lock held): under drop_oldest, every live subscriber whose
// queue is full loses its oldest pending samples. Under block, true if every live subscriber
// has room.
bool make_room_locked(TopicRef &t, std::uint64_t head) {
    bool room = true;
    for (std::uint32_t i = 0; i < t.limit(); ++i) {
        SubscriberSlot &s = t.sub(i);
        if (s.state.load(std::memory_order_relaxed) != kSubLive)
            continue;
        const std::uint64_t c = s.cursor.load(std::memory_order_relaxed);
        if (c > head || head - c > t.g.slots)
            corrupt(t, "a subscriber's cursor is outside the ring");
        if (head - c < t.g.capacity)
            continue;
        if (t.g.overflow == Overflow::Block) {
            room = false;
            continue;
        }
        const std::uint64_t drop = head - c - t.g.capacity + 1;
        std::uint64_t expected = c;
        // SYNC POINT: a CAS (not a store): the subscriber advances its own cursor only with the
        // lock too, but poll()/len read it without.
        if (s.cursor.compare_exchange_strong(expected, c + drop, std::memory_order_acq_rel))
            s.missed.fetch_add(drop, std::memory_order_relaxed);
    }
    return room;
}

} // namespace

std::unique_ptr<TopicPublisher> TopicPublisher::open(Heap &heap, std::string_view name,
                                                     const TopicOptions &opt) {
    auto p = std::unique_ptr<TopicPublisher>(new TopicPublisher(TopicRef::open(heap, name, &opt)));
    p->claim();
    return p;
}

TopicPublisher::TopicPublisher(std::unique_ptr<TopicRef> t) : t_(std::move(t)) {}

TopicPublisher::~TopicPublisher() {
    if (!claimed_ || closed_ || stamp_.inherited())
        return;
    // Gone without close(): subscribers drain, then PeerDied.
    try {
        // SYNC POINT: the topic lock (acquire/release): pub_state changes under it.
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        if (t_->ctl->pub_token.load(std::memory_order_relaxed) == token_ &&
            t_->ctl->pub_state.load(std::memory_order_relaxed) == kPubLive)
            // SYNC POINT: release (the topic lock held), pairs with the acquire loads of pub_state
            // by subscribers (wait_for_sample, try_recv, recv_ready): every sample published before
            // is seen before the departure.
            t_->ctl->pub_state.store(kPubDeparted, std::memory_order_release);
    } catch (...) {
    }
    // SYNC POINT: futex wake of data after the pub_state store: pairs with the futex wait in the
    // subscribers' wait_for_sample (spin_then_wait), which re-check pub_state.
    notify_all(t_->ctl->data);
}

const std::string &TopicPublisher::name() const noexcept {
    return t_->name;
}
const TopicGeometry &TopicPublisher::geometry() const noexcept {
    return t_->g;
}

void TopicPublisher::claim() {
    TopicRef &t = *t_;
    t.heap.flush_thread_caches(); // a forked heap handle becomes this process's own client
    const std::uint32_t token = t.heap.lock_token();
    {
        // SYNC POINT: the topic lock (robust mutex, acquire; released at the end of the block):
        // orders the claim with every other change of the bookkeeping; a dead holder's change is
        // repaired first (recover).
        auto lk = t.lock(Deadline(10.0));
        const std::uint32_t st = t.ctl->pub_state.load(std::memory_order_relaxed);
        const std::uint32_t tok = t.ctl->pub_token.load(std::memory_order_relaxed);
        if (st == kPubClosed)
            throw OsError(EPIPE, t.what() + " was closed by its publisher (remove it to reuse "
                                            "the name)");
        if (st == kPubLive && t.holder_alive(tok))
            throw ChannelBusy(t.what() + " already has a live publisher");
        t.ctl->pub_token.store(token, std::memory_order_relaxed);
        // SYNC POINT: release, pairs with the acquire loads of pub_state (subscribers,
        // list_topics): the pub_token stored just before is seen with it.
        t.ctl->pub_state.store(kPubLive, std::memory_order_release);
        (void)t.reap_dead_locked(false);
    }
    token_ = token;
    claimed_ = true;
    stamp_.renew();
    next_reap_ = Clock::now() + kReapEvery;
}

void TopicPublisher::ensure_role() {
    if (closed_)
        throw Closed("publisher of " + t_->what() + " is closed");
    if (stamp_.inherited()) {
        claimed_ = false; // the parent's role: never ours
        claim();
    }
}

bool TopicPublisher::has_room() {
    TopicRef &t = *t_;
    if (t.g.overflow == Overflow::DropOldest)
        return true;
    const std::uint64_t head = t.ctl->head.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < t.limit(); ++i) {
        SubscriberSlot &s = t.sub(i);
        // SYNC POINT: acquire, pairs with the release of state in subscribe(): its cursor is set.
        if (s.state.load(std::memory_order_acquire) != kSubLive)
            continue;
        // SYNC POINT: acquire, pairs with the release stores of the cursor by the subscriber
        // (copy_out, take_locked): the subscriber's reads of the slots below it are done.
        const std::uint64_t c = s.cursor.load(std::memory_order_acquire);
        // A cursor outside the ring is garbage: say "room", the locked path reports it.
        if (c <= head && head - c >= t.g.capacity && head - c <= t.g.slots)
            return false;
    }
    return true;
}

bool TopicPublisher::ready() {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread of this handle at a time;
    // a try never waits.
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role();
    return has_room();
}

void TopicPublisher::wait_ready(const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex, acquire/release): one thread of this handle at a time.
    std::lock_guard g(mu_);
    ensure_role();
    if (!has_room())
        wait_for_room(deadline);
}

void TopicPublisher::wait_for_room(const Deadline &deadline) {
    TopicRef &t = *t_;
    bool first = true;
    // SYNC POINT: futex wait on room (spin first): pairs with the wakes of room by subscribers
    // after they advance their cursor (release) or close; has_room() re-checks with acquire loads.
    const bool ok = spin_then_wait(
        t.ctl->room, [&] { return has_room(); },
        [&]() -> std::chrono::nanoseconds {
            if (deadline.expired())
                return std::chrono::nanoseconds{0};
            // Before the first sleep only the deadline matters: a wake-up usually ends the wait,
            // and the lock and liveness syscalls would cost every blocked hand-off.
            if (first) {
                first = false;
                return deadline.slice();
            }
            check_interrupt();
            {
                // SYNC POINT: the topic lock (acquire/release): reaping changes the subscriber
                // slots.
                auto lk = t.lock(deadline);
                (void)t.reap_dead_locked(true); // a dead subscriber blocks us at most a slice
            }
            return deadline.slice();
        },
        spin_policy(std::chrono::nanoseconds(spin_ns_.load()), deadline));
    if (!ok)
        throw Timeout(t.what() + ": a subscriber's queue stayed full until the timeout");
}

std::uint64_t TopicPublisher::make_header(std::uint64_t off, std::uint64_t len,
                                          std::string_view meta, const Deadline &deadline) {
    if (meta.size() > kTopicMaxMeta)
        throw InvalidArgument("sample metadata of " + std::to_string(meta.size()) +
                              " bytes exceeds " + std::to_string(kTopicMaxMeta));
    Heap &h = t_->heap;
    const std::uint64_t hoff = h.allocate(sizeof(SampleHeader) + meta.size(), deadline);
    auto *hd = static_cast<SampleHeader *>(h.to_ptr(hoff));
    hd->magic = kSampleMagic;
    hd->refs.store(1, std::memory_order_relaxed); // the ring's
    hd->state.store(kSampleLive, std::memory_order_relaxed);
    hd->data = off;
    hd->length = len;
    hd->seq = 0;
    hd->meta_length = meta.size();
    hd->reserved[0] = hd->reserved[1] = 0;
    if (!meta.empty())
        std::memcpy(reinterpret_cast<std::byte *>(hd) + sizeof(SampleHeader), meta.data(),
                    meta.size());
    return hoff;
}

bool TopicPublisher::publish_locked(std::uint64_t off, std::uint64_t len, std::string_view meta,
                                    const Deadline *deadline) {
    TopicRef &t = *t_;
    Heap &heap = t.heap;
    ensure_role();
    if (heap.owner_of(off) != heap.client_id())
        throw InvalidArgument("the block at offset " + std::to_string(off) +
                              " is not owned by this process (already published or freed?)");
    if (len > heap.block_capacity(off))
        throw InvalidArgument("length " + std::to_string(len) + " exceeds the block");
    if (!has_room()) {
        if (!deadline)
            return false;
        wait_for_room(*deadline);
    }
    // A try never waits, not even for the heap lock: held for a moment by another process it
    // is "not now" (false), and the caller waits with its own deadline.
    std::uint64_t hoff = 0;
    if (deadline) {
        hoff = make_header(off, len, meta, *deadline);
    } else {
        try {
            hoff = make_header(off, len, meta, Deadline(0.0));
        } catch (const Timeout &) {
            return false;
        }
    }
    bool moved = false;
    try {
        for (;;) {
            // SYNC POINT: the topic lock (acquire; released when lk goes): every change of the
            // ring, head, cursors and refs below is made with it, so its release publishes them to
            // the next locker.
            topic_detail::Held lk = deadline ? t.lock(*deadline) : t.try_lock();
            if (!lk) {
                heap.deallocate(hoff);
                return false;
            }
            TopicControl *c = t.ctl;
            const std::uint64_t head = c->head.load(std::memory_order_relaxed);
            if (c->pub_token.load(std::memory_order_relaxed) != token_ ||
                c->pub_state.load(std::memory_order_relaxed) != kPubLive)
                throw ChannelBusy(t.what() + ": this publisher was taken over");
            if (!make_room_locked(t, head)) {
                // A subscriber joined with a full history meanwhile: wait again.
                lk.reset();
                if (!deadline) {
                    heap.deallocate(hoff);
                    return false;
                }
                wait_for_room(*deadline);
                continue;
            }
            TopicSlot &s = t.slot(head);
            const std::uint64_t old_seq = s.seq.load(std::memory_order_relaxed);
            const std::uint64_t old = s.sample.load(std::memory_order_relaxed);
            const bool evict = head >= t.g.slots && old_seq == head - t.g.slots;
            if (evict)
                (void)t.header(old); // validated before anything changes
            static_cast<SampleHeader *>(heap.to_ptr(hoff))->seq = head;
            c->inflight.store(hoff, std::memory_order_relaxed);
            // The header first, then the data it references: at every instant each block has
            // exactly one reclaimer. Killed before the header's transfer, both blocks are still
            // ours (the heap reaps them; recovery leaves a header we own alone). Killed between
            // the two, the header is held and announced in `inflight` (recovery frees it) and
            // the data is still ours (the heap reaps it; finish_free frees data only if held).
            // After both, recovery frees the unlinked header and its data (finish_free), or the
            // ring references them.
            heap.transfer(hoff, kOwnerHeld);
            crash_point("topic.publish.header_held");
            try {
                heap.transfer(off, kOwnerHeld);
            } catch (...) {
                c->inflight.store(0, std::memory_order_relaxed); // the header is freed below
                throw;
            }
            moved = true;
            if (evict) {
                c->evicting.store(old, std::memory_order_relaxed);
                s.seq.store(kNoSeq, std::memory_order_relaxed);
                t.drop_ref(old);
                c->evicting.store(0, std::memory_order_relaxed);
            }
            s.sample.store(hoff, std::memory_order_relaxed);
            // SYNC POINT: release: the sample offset stored before it is ordered before seq. Its
            // readers (locate_locked, recover) load it under the topic lock, which is what pairs.
            s.seq.store(head, std::memory_order_release);
            // SYNC POINT: release, pairs with the acquire loads of head by subscribers (waits,
            // poll); the lock orders everything else.
            c->head.store(head + 1, std::memory_order_release);
            c->inflight.store(0, std::memory_order_relaxed);
            break;
        }
    } catch (...) {
        if (!moved) {
            try {
                heap.deallocate(hoff);
            } catch (...) {
            }
        }
        throw;
    }
    // SYNC POINT: futex wake of data after the release store of head: pairs with the futex wait in
    // wait_for_sample, whose predicate reloads head (acquire).
    wake_if_waiting(t.ctl->data);
    if (Clock::now() >= next_reap_) {
        next_reap_ = Clock::now() + kReapEvery;
        // SYNC POINT: the topic lock (acquire/release) for the periodic reap.
        if (auto lk = t.try_lock())
            (void)t.reap_dead_locked(false);
    }
    return true;
}

void TopicPublisher::publish_block(std::uint64_t off, std::uint64_t len, std::string_view meta,
                                   const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex): one thread of this handle at a time.
    std::lock_guard g(mu_);
    (void)publish_locked(off, len, meta, &deadline);
}

bool TopicPublisher::try_publish_block(std::uint64_t off, std::uint64_t len,
                                       std::string_view meta) {
    // SYNC POINT: mu_ (process-local mutex): a try never waits.
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    return publish_locked(off, len, meta, nullptr);
}

void TopicPublisher::publish_bytes(const void *data, std::size_t n, std::string_view meta,
                                   const Deadline &deadline) {
    // SYNC POINT: mu_ (process-local mutex): one thread of this handle at a time.
    std::lock_guard g(mu_);
    ensure_role();
    if (!has_room())
        wait_for_room(deadline); // before the copy
    Heap &heap = t_->heap;
    // The publish's deadline bounds the heap lock wait too (a stopped holder is Timeout).
    const std::uint64_t off = heap.allocate(std::max<std::size_t>(n, 1), deadline);
    try {
        if (n)
            bulk_copy(heap.to_ptr(off), data, n);
        (void)publish_locked(off, n, meta, &deadline);
    } catch (...) {
        heap.deallocate(off);
        throw;
    }
}

bool TopicPublisher::try_publish_bytes(const void *data, std::size_t n, std::string_view meta) {
    // SYNC POINT: mu_ (process-local mutex): a try never waits.
    std::unique_lock g(mu_, std::try_to_lock);
    if (!g)
        return false;
    ensure_role();
    if (!has_room())
        return false;
    Heap &heap = t_->heap;
    std::uint64_t off = 0;
    try {
        off = heap.allocate(std::max<std::size_t>(n, 1), Deadline(0.0));
    } catch (const Timeout &) {
        return false; // the heap lock is busy: not now
    }
    bool ok = false;
    try {
        if (n)
            bulk_copy(heap.to_ptr(off), data, n);
        ok = publish_locked(off, n, meta, nullptr);
    } catch (...) {
        heap.deallocate(off);
        throw;
    }
    if (!ok)
        heap.deallocate(off);
    return ok;
}

void TopicPublisher::close() {
    // SYNC POINT: mu_ (process-local mutex): excludes a concurrent publish of this handle.
    std::lock_guard g(mu_);
    if (closed_)
        return;
    closed_ = true;
    if (!claimed_ || stamp_.inherited())
        return;
    {
        // SYNC POINT: the topic lock (acquire/release): pub_state changes under it.
        auto lk = t_->lock(Deadline(kReleaseLockWait));
        if (t_->ctl->pub_token.load(std::memory_order_relaxed) == token_)
            // SYNC POINT: release (the topic lock held), pairs with the acquire loads of pub_state
            // by subscribers: every sample published before the close is seen before EndOfStream.
            t_->ctl->pub_state.store(kPubClosed, std::memory_order_release);
    }
    // SYNC POINT: futex wake of data after the close: pairs with the futex wait in wait_for_sample,
    // which re-checks pub_state (acquire).
    notify_all(t_->ctl->data);
}

void TopicPublisher::abandon() noexcept {
    closed_ = true;
}

std::uint32_t TopicPublisher::subscribers() const {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < t_->limit(); ++i)
        n += t_->sub(i).state.load(std::memory_order_relaxed) == kSubLive;
    return n;
}

std::uint64_t TopicPublisher::published() const {
    return t_->ctl->head.load(std::memory_order_relaxed);
}

} // namespace shmipc
