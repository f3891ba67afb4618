// The shared layout of a topic (one publisher, many subscribers): every struct another process
// reads, and its constants. Nothing here is process-local; changing anything bumps
// kTopicLayoutVersion.
//
// A topic is a named object of its heap (kind kNamedTopic, a block held by the heap):
//
//   offset                          size               what
//   0                               320 (5 lines)      TopicControl: geometry; lock, publisher
//                                                      token, recovery words; head and publisher
//                                                      state (what spinning subscribers read, on
//                                                      a line of its own); two futex words
//   320                             16 * slots         TopicSlot[slots]: {seq, sample header}
//   320 + pad64(16 * slots)         sub_bytes * max_s  SubscriberSlot[max_subscribers], each
//                                                      followed by held[max_held] (u64 each)
//
// Samples. Each published sample is two heap blocks held by the heap (kOwnerHeld): the data
// block (the user's Block, moved, or a copy) and a SampleHeader block {magic, refs, state, data
// offset, length, seq, metadata length, metadata bytes...}. refs counts the ring's reference
// (while the sample is one of the last `slots` published) plus one per subscriber that received
// it and did not release it (its held[] entries). Whoever drops the last reference frees both
// blocks. A subscriber's pending samples [cursor, head) hold no reference: they are in the ring
// (the overflow policy keeps head - cursor < slots for every live subscriber before the
// publisher overwrites a slot).
//
// Concurrency: every change of the bookkeeping (slots, head, cursors, held[], refs) is made with
// the topic's robust mutex (sync/robust_mutex, tokens of the heap's client table); head, the
// cursors and pub_state are also read without it (waits, poll, len). The stored refs are a cache
// of what the ring and the held[] lists say: a locker that takes the mutex over from a dead holder
// recounts them from those lists and finishes the half-done operation the holder had announced
// in `inflight` (a sample being published), `evicting` (one leaving the ring) or `freeing` (one
// whose blocks are being freed), so no block leaks and none is freed twice.
//
// Liveness: the publisher and each subscriber record the lock token of their heap client
// (Heap::lock_token); ClientTable::holder(token) tells alive from dead (the client's OFD lock,
// dropped by the kernel when the process dies). Dead subscribers are reaped (their held samples
// released, their slot freed) by the publisher (within ~250 ms while it publishes or waits), by
// new subscribers and by remove().
//
// Untrusted memory: the geometry is validated at open and kept privately; every index and offset
// read later (head - cursor, slot seq, header and data offsets, held entries) is checked before
// use; a bad one is CorruptSegment.
#pragma once

#include "ipc_core/sync/robust_mutex.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace shmipc {

inline constexpr std::uint64_t kTopicMagic = 0x3143495030544f54ULL;  // "TOT0PIC1" little endian
inline constexpr std::uint64_t kSampleMagic = 0x31454c504d415354ULL; // "TSAMPLE1"
inline constexpr std::uint32_t kTopicLayoutVersion = 1;

inline constexpr std::uint32_t kTopicMaxCapacity = 1u << 16; // per-subscriber queue depth
inline constexpr std::uint32_t kTopicMaxSubscribers = 4096;  // max_subscribers
inline constexpr std::uint32_t kTopicMaxHeld = 1u << 16;     // samples one subscriber holds
inline constexpr std::uint64_t kNoSeq = ~std::uint64_t{0};   // an empty ring slot
inline constexpr std::size_t kTopicMaxMeta = 64 * 1024;      // metadata bytes per sample

enum class Overflow : std::uint32_t {
    Block = 1,      // publish waits while a live subscriber's queue is full
    DropOldest = 2, // publish never waits; a full subscriber loses its oldest pending sample
};

// TopicControl::pub_state
enum PublisherState : std::uint32_t {
    kPubNone = 0,     // no publisher yet
    kPubLive = 1,     // pub_token's client publishes (dead if that token's holder is gone)
    kPubClosed = 2,   // end of stream: subscribers drain, then EndOfStream
    kPubDeparted = 3, // the publisher went away without closing: drain, then PeerDied
};

// SubscriberSlot::state
enum SubscriberState : std::uint32_t {
    kSubFree = 0,
    kSubLive = 1,    // receives; its cursor counts for the overflow policy
    kSubClosing = 2, // closed, still holds samples (held_count > 0); ignored by the publisher
};

// SampleHeader::state
enum SampleState : std::uint32_t { kSampleLive = 1, kSampleFreeing = 2 };

struct alignas(64) TopicControl {
    // --- line 0: geometry, written once by the creator --------------------------------------
    std::uint64_t magic;           // kTopicMagic
    std::uint32_t layout_version;  // kTopicLayoutVersion
    std::uint32_t capacity;        // pending samples per subscriber, 1..kTopicMaxCapacity
    std::uint32_t history;         // samples a late joiner gets, 0..kTopicMaxCapacity
    std::uint32_t slots;           // ring slots: max(capacity, history)
    std::uint32_t overflow;        // Overflow
    std::uint32_t max_subscribers; // 1..kTopicMaxSubscribers
    std::uint32_t max_held;        // held[] entries per subscriber, 1..kTopicMaxHeld
    std::uint32_t reserved0[7];
    // --- line 1: lock, publisher claim, recovery words (written under the lock) -------------
    alignas(64) RobustMutexWord lock;
    std::atomic<std::uint32_t> pub_token; // lock token of the publisher's heap client
    std::atomic<std::uint32_t> sub_limit; // slots [0, sub_limit) were ever used (scan bound)
    std::atomic<std::uint64_t> inflight;  // header of the sample being published (lock held)
    std::atomic<std::uint64_t> evicting;  // header leaving the ring (lock held)
    std::atomic<std::uint64_t> freeing;   // header whose blocks are being freed (lock held)
    std::uint64_t reserved1[3];
    // --- line 2: what waiting subscribers read (the publisher writes it, once per sample) -----
    alignas(64) std::atomic<std::uint64_t> head; // next seq to publish ([head - slots, head))
    std::atomic<std::uint32_t> pub_state;        // PublisherState
    std::uint32_t reserved2[13];
    // --- line 3: subscribers sleep here; the publisher wakes them ---------------------------
    alignas(64) FutexWord data;
    // --- line 4: the publisher sleeps here (overflow=block); subscribers wake it -----------
    alignas(64) FutexWord room;
};
static_assert(std::is_standard_layout_v<TopicControl>);
static_assert(sizeof(TopicControl) == 320);
static_assert(offsetof(TopicControl, capacity) == 12 && offsetof(TopicControl, max_held) == 32);
static_assert(offsetof(TopicControl, lock) == 64 && offsetof(TopicControl, pub_token) == 72);
static_assert(offsetof(TopicControl, sub_limit) == 76 && offsetof(TopicControl, freeing) == 96);
static_assert(offsetof(TopicControl, head) == 128 && offsetof(TopicControl, pub_state) == 136);
static_assert(offsetof(TopicControl, data) == 192 && offsetof(TopicControl, room) == 256);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct TopicSlot {
    std::atomic<std::uint64_t> seq;    // the sample's sequence number, kNoSeq if empty
    std::atomic<std::uint64_t> sample; // heap offset of its SampleHeader
};
static_assert(std::is_standard_layout_v<TopicSlot> && sizeof(TopicSlot) == 16);

struct alignas(64) SubscriberSlot {
    std::atomic<std::uint32_t> state;      // SubscriberState
    std::atomic<std::uint32_t> token;      // lock token of the subscriber's heap client
    std::atomic<std::uint64_t> cursor;     // next seq to receive
    std::atomic<std::uint64_t> missed;     // samples dropped for it (overflow=drop_oldest)
    std::atomic<std::uint32_t> held_count; // non-zero held[] entries
    std::uint32_t reserved0;
    std::uint64_t reserved1[4];
    // followed by std::atomic<std::uint64_t> held[max_held]: headers it received, 0 = empty
    [[nodiscard]] std::atomic<std::uint64_t> *held() noexcept {
        return reinterpret_cast<std::atomic<std::uint64_t> *>(this + 1);
    }
};
static_assert(std::is_standard_layout_v<SubscriberSlot> && sizeof(SubscriberSlot) == 64);
static_assert(offsetof(SubscriberSlot, cursor) == 8 && offsetof(SubscriberSlot, held_count) == 24);

struct alignas(64) SampleHeader {
    std::uint64_t magic;              // kSampleMagic
    std::atomic<std::uint32_t> refs;  // see above
    std::atomic<std::uint32_t> state; // SampleState
    std::uint64_t data;               // heap offset of the data block
    std::uint64_t length;             // meaningful bytes of it
    std::uint64_t seq;                // diagnostics
    std::uint64_t meta_length;        // bytes of metadata after the header (<= kTopicMaxMeta)
    std::uint64_t reserved[2];
    // followed by meta_length bytes of metadata (NumPy dtype/shape for recv_array)
};
static_assert(std::is_standard_layout_v<SampleHeader> && sizeof(SampleHeader) == 64);
static_assert(offsetof(SampleHeader, data) == 16 && offsetof(SampleHeader, meta_length) == 40);

// Geometry of a topic, validated and kept privately by every handle.
struct TopicGeometry {
    std::uint32_t capacity = 0;
    std::uint32_t history = 0;
    std::uint32_t slots = 0;
    Overflow overflow = Overflow::Block;
    std::uint32_t max_subscribers = 0;
    std::uint32_t max_held = 0;
    std::size_t sub_bytes = 0;   // bytes of one SubscriberSlot with its held[]
    std::size_t subs_offset = 0; // of SubscriberSlot[0] from the control block
    std::size_t total = 0;       // bytes of the whole object
};

} // namespace shmipc
