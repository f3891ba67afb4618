#include "ipc_core/value/shared_value.hpp"

#include "ipc_core/base/bulk_copy.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "ipc_core/testing/crash_point.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <new>
#include <sched.h>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <unistd.h>

namespace shmipc {

namespace {

constexpr std::size_t kAlign = 64;
constexpr std::size_t kControlOffset = sizeof(SegmentHeader);
constexpr std::size_t kWritersOffset =
    (kControlOffset + sizeof(ValueControl) + kAlign - 1) / kAlign * kAlign;
constexpr std::size_t kFirstSlotOffset =
    (kWritersOffset + ClientTable::bytes(kValueMaxWriters) + kAlign - 1) / kAlign * kAlign;

std::size_t slot_stride(std::size_t capacity, std::size_t meta_capacity) {
    return sizeof(ValueSlot) + round_up(meta_capacity, kAlign) + round_up(capacity, kAlign);
}

// Seqlock payload copy: it may race a writer (the seq re-check then discards the copy), which
// is the one data race a seqlock is built on; TSan cannot know the result is thrown away.
__attribute__((no_sanitize("thread"))) void racy_copy(std::byte *dst, const std::byte *src,
                                                      std::size_t n) noexcept {
    if (n)
        std::memcpy(dst, src, n);
}

} // namespace

std::size_t shared_value_segment_size(std::size_t capacity) {
    if (capacity == 0 || capacity > kMaxValueCapacity)
        throw InvalidArgument("SharedValue size must be 1.." + std::to_string(kMaxValueCapacity) +
                              " bytes, not " + std::to_string(capacity));
    return kFirstSlotOffset + 2 * slot_stride(capacity, kValueMetaCapacity);
}

SharedValue::SharedValue(MemorySegment seg)
    : seg_(std::move(seg)), ctl_(reinterpret_cast<ValueControl *>(seg_.data() + kControlOffset)) {
    // Called after validation (create or attach): these are now private, trusted copies.
    capacity_ = static_cast<std::size_t>(ctl_->capacity);
    meta_capacity_ = kValueMetaCapacity;
    const std::size_t stride = slot_stride(capacity_, meta_capacity_);
    slot_off_[0] = kFirstSlotOffset;
    slot_off_[1] = kFirstSlotOffset + stride;
}

SharedValue::~SharedValue() {
    std::lock_guard g(writer_mu_);
    if (writer_registered_ && !writer_stamp_.inherited())
        writers_.unregister_client();
    if (lock_fd_)
        forget_in_fork_children(lock_fd_.get());
}

std::uint32_t SharedValue::writer_token() const {
    std::lock_guard g(writer_mu_);
    if (writer_registered_ && !writer_stamp_.inherited()) [[likely]]
        return writers_.token();
    if (!lock_fd_) {
        lock_fd_ = UniqueFd(reopen_description(seg_.fd()));
        renew_in_fork_children(lock_fd_.get());
        writers_ = ClientTable(seg_.data() + kWritersOffset, seg_.size() - kWritersOffset,
                               kValueMaxWriters, lock_fd_.get(), "SharedValue '" + name() + "'");
        writer_mutex_ = RobustMutex(ctl_->writer, writers_, "SharedValue '" + name() + "'");
    }
    if (writer_stamp_.inherited()) {
        writers_.forget(); // the parent's registration; our lock_fd was renewed at fork
        writer_stamp_.renew();
    }
    (void)writers_.register_client();
    writer_registered_ = true;
    return writers_.token();
}

std::unique_ptr<SharedValue> SharedValue::create(std::string_view name, std::size_t capacity,
                                                 mode_t mode, bool persistent) {
    const std::size_t total = shared_value_segment_size(capacity);
    auto seg = MemorySegment::create_named(
        name, total, mode, SegmentKind::SharedValue, kSharedValueLayout, persistent,
        [&](std::byte *base) {
            // The file is fresh (zero-filled) and invisible to others until published.
            auto *ctl = new (base + kControlOffset) ValueControl{};
            ClientTable::init(base + kWritersOffset, kValueMaxWriters);
            ctl->capacity = capacity;
            ctl->meta_capacity = kValueMetaCapacity;
            ctl->slot_stride = slot_stride(capacity, kValueMetaCapacity);
            for (int i = 0; i < 2; ++i) {
                ctl->slot_offset[i] =
                    kFirstSlotOffset + static_cast<std::size_t>(i) * ctl->slot_stride;
                new (base + ctl->slot_offset[i]) ValueSlot{};
            }
        });
    return std::unique_ptr<SharedValue>(new SharedValue(std::move(seg)));
}

std::unique_ptr<SharedValue> SharedValue::attach(std::string_view name, const TrustPolicy &trust) {
    auto seg = MemorySegment::attach_named(name, SegmentKind::SharedValue, kSharedValueLayout,
                                           kFirstSlotOffset + 2 * sizeof(ValueSlot), trust);
    // The header is valid; now check the control block before trusting any offset in it.
    const auto *ctl = reinterpret_cast<const ValueControl *>(seg.data() + kControlOffset);
    const std::string what = "'" + seg.name() + "' is not a valid SharedValue: ";
    if (ctl->capacity == 0 || ctl->capacity > kMaxValueCapacity)
        throw CorruptSegment(what + "bad capacity " + std::to_string(ctl->capacity));
    if (ctl->meta_capacity != kValueMetaCapacity)
        throw CorruptSegment(what + "bad meta capacity");
    const std::size_t stride = slot_stride(ctl->capacity, ctl->meta_capacity);
    if (ctl->slot_stride != stride || ctl->slot_offset[0] != kFirstSlotOffset ||
        ctl->slot_offset[1] != kFirstSlotOffset + stride)
        throw CorruptSegment(what + "bad slot layout");
    if (seg.size() != kFirstSlotOffset + 2 * stride)
        throw CorruptSegment(what + "size " + std::to_string(seg.size()) +
                             " does not match capacity " + std::to_string(ctl->capacity));
    auto v = std::unique_ptr<SharedValue>(new SharedValue(std::move(seg)));
    if (v->writable()) {
        // A scribbled writer lock fails the attach now, not the first write later.
        (void)v->writer_token();
        v->writer_mutex_.validate();
    }
    return v;
}

bool SharedValue::persistent() const noexcept {
    return (seg_.header()->flags & kFlagPersistent) != 0;
}

std::uint64_t SharedValue::version() const noexcept {
    // SYNC POINT: pairs with the release store of version in write_locked.
    return ctl_->version.load(std::memory_order_acquire);
}

std::uint64_t SharedValue::writer_deaths() const noexcept {
    return __atomic_load_n(&ctl_->writer_deaths, __ATOMIC_RELAXED);
}

ValueSlot &SharedValue::slot(std::uint32_t i) const noexcept {
    return *reinterpret_cast<ValueSlot *>(seg_.data() + slot_off_[i & 1]);
}
std::byte *SharedValue::meta_ptr(std::uint32_t i) const noexcept {
    return seg_.data() + slot_off_[i & 1] + sizeof(ValueSlot);
}
std::byte *SharedValue::data_ptr(std::uint32_t i) const noexcept {
    return meta_ptr(i) + round_up(meta_capacity_, kAlign);
}

// ---- writers ---------------------------------------------------------------------------------

SharedValue::WriterLock::WriterLock(const SharedValue &v, const Deadline &d) : v_(&v) {
    if (v.closing_.load(std::memory_order_relaxed))
        throw Closed("SharedValue is closed");
    std::uint32_t token = v.writer_token();
    v.writer_mutex_.lock(token, d, [&] {
        // The previous writer died holding the lock. Its slot is the non-current one and is
        // rewritten from scratch by the next write, so the state is consistent as it stands.
        __atomic_fetch_add(&v.ctl_->writer_deaths, 1, __ATOMIC_RELAXED);
    });
}

SharedValue::WriterLock::~WriterLock() {
    v_->writer_mutex_.unlock();
}

void SharedValue::check_write(std::span<const std::byte> meta,
                              std::span<const std::byte> data) const {
    if (data.size() > capacity_)
        throw InvalidArgument("value of " + std::to_string(data.size()) +
                              " bytes exceeds the capacity of SharedValue '" + name() + "' (" +
                              std::to_string(capacity_) + " bytes)");
    if (meta.size() > meta_capacity_)
        throw InvalidArgument("value description of " + std::to_string(meta.size()) +
                              " bytes exceeds " + std::to_string(meta_capacity_) + " bytes");
    if (!writable())
        throw OsError(EACCES, "SharedValue '" + name() + "' is attached read-only");
}

std::uint64_t SharedValue::write_locked(std::uint32_t type, std::span<const std::byte> meta,
                                        std::span<const std::byte> data) {
    const std::uint32_t cur = ctl_->current.load(std::memory_order_relaxed) & 1;
    const std::uint32_t next = cur ^ 1;
    ValueSlot &s = slot(next);
    // A dead writer may have left the slot odd: keep it odd but change it, so a reader that
    // started on the dead writer's seq still sees a difference.
    const std::uint64_t old = s.seq.load(std::memory_order_relaxed);
    const std::uint64_t odd = (old & 1) ? old + 2 : old + 1;
    s.seq.store(odd, std::memory_order_relaxed);
    // SYNC POINT: pairs with the acquire fence in try_copy: a reader that sees any byte below
    // also sees seq odd (or changed) on its re-check.
    std::atomic_thread_fence(std::memory_order_release);
    // The previous writer may have died after publishing its slot but before bumping version.
    const std::uint64_t v = std::max(ctl_->version.load(std::memory_order_relaxed),
                                     slot(cur).version.load(std::memory_order_relaxed)) +
                            1;
    s.version.store(v, std::memory_order_relaxed);
    s.type.store(type, std::memory_order_relaxed);
    s.meta_len.store(static_cast<std::uint32_t>(meta.size()), std::memory_order_relaxed);
    s.nbytes.store(data.size(), std::memory_order_relaxed);
    if (!meta.empty())
        std::memcpy(meta_ptr(next), meta.data(), meta.size());
    const std::size_t half = data.size() / 2;
    if (half)
        bulk_copy(data_ptr(next), data.data(), half);
    crash_point("value.write.half");
    if (data.size() > half)
        bulk_copy(data_ptr(next) + half, data.data() + half, data.size() - half);
    // SYNC POINT: pairs with the acquire load of seq in try_snapshot.
    s.seq.store(odd + 1, std::memory_order_release);
    // SYNC POINT: pairs with the acquire load of current in try_snapshot.
    ctl_->current.store(next, std::memory_order_release);
    // SYNC POINT: pairs with the acquire loads in version() and wait().
    ctl_->version.store(v, std::memory_order_release);
    notify_all(ctl_->changed);
    return v;
}

std::uint64_t SharedValue::write(std::uint32_t type, std::span<const std::byte> meta,
                                 std::span<const std::byte> data, const Deadline &deadline) {
    if (type == 0)
        throw InvalidArgument("value type tag 0 is reserved for 'never written'");
    check_write(meta, data);
    WriterLock lock(*this, deadline);
    std::uint64_t v = write_locked(type, meta, data);
    seg_.check_intact("SharedValue");
    return v;
}

// ---- readers ---------------------------------------------------------------------------------

bool SharedValue::try_snapshot(ValueSnapshot &out) const {
    // SYNC POINT: pairs with the release store of current in write_locked.
    const std::uint32_t cur = ctl_->current.load(std::memory_order_acquire);
    if (cur > 1)
        throw CorruptSegment("SharedValue '" + name() + "': bad current slot");
    const ValueSlot &s = slot(cur);
    // SYNC POINT: pairs with the release store of the even seq in write_locked.
    const std::uint64_t seq = s.seq.load(std::memory_order_acquire);
    if (seq & 1)
        return false; // being rewritten: the value moved on; look again
    out.slot = cur;
    out.seq = seq;
    out.version = s.version.load(std::memory_order_relaxed);
    out.type = s.type.load(std::memory_order_relaxed);
    out.nbytes = s.nbytes.load(std::memory_order_relaxed);
    const std::uint32_t meta_len = s.meta_len.load(std::memory_order_relaxed);
    // Sizes are re-validated by the seq check, but must be bounded before any copy uses them.
    if (out.nbytes > capacity_ || meta_len > meta_capacity_) {
        // SYNC POINT: acquire fence, pairs with the release fence after seq turned odd in
        // write_locked: sizes read during a write are told apart by the seq re-check.
        std::atomic_thread_fence(std::memory_order_acquire);
        if (s.seq.load(std::memory_order_relaxed) != seq)
            return false;
        throw CorruptSegment("SharedValue '" + name() + "': slot sizes out of range");
    }
    out.meta.resize(meta_len);
    racy_copy(reinterpret_cast<std::byte *>(out.meta.data()), meta_ptr(cur), meta_len);
    // SYNC POINT: acquire fence, as above (the seqlock's read side).
    std::atomic_thread_fence(std::memory_order_acquire);
    return s.seq.load(std::memory_order_relaxed) == seq;
}

bool SharedValue::try_copy(const ValueSnapshot &snap, std::byte *dst) const {
    const ValueSlot &s = slot(snap.slot);
    racy_copy(dst, data_ptr(snap.slot), static_cast<std::size_t>(snap.nbytes));
    seg_.check_intact("SharedValue"); // zeros from a page beyond a shrunk file are not a value
    // SYNC POINT: pairs with the release fence after seq turned odd in write_locked.
    std::atomic_thread_fence(std::memory_order_acquire);
    return s.seq.load(std::memory_order_relaxed) == snap.seq;
}

void SharedValue::backoff(unsigned attempt) noexcept {
    if (attempt < 4)
        return;
    if (attempt < 12) {
        ::sched_yield();
        return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
}

bool SharedValue::wait(std::uint64_t since, const Deadline &deadline, int spin) const {
    // SYNC POINT: acquire, pairs with the release store of version in write_locked.
    auto ready = [&] { return ctl_->version.load(std::memory_order_acquire) > since; };
    auto between = [&]() -> std::chrono::nanoseconds {
        if (closing_.load(std::memory_order_relaxed))
            throw Closed("SharedValue is closed");
        check_interrupt();
        return deadline.slice();
    };
    if (ready())
        return true;
    if (deadline.remaining().count() == 0)
        return false;
    for (int i = 0; i < spin; ++i) {
        if (ready())
            return true;
        cpu_relax();
    }
    return wait_until(ctl_->changed, ready, between);
}

SharedValue::DebugState SharedValue::debug_state() const noexcept {
    // SYNC POINT: acquire, pairs with the release stores of current and seq in write_locked.
    return DebugState{
        ctl_->current.load(std::memory_order_acquire),
        {slot(0).seq.load(std::memory_order_acquire), slot(1).seq.load(std::memory_order_acquire)}};
}

} // namespace shmipc
