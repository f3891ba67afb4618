#include "ipc_core/heap/directory.hpp"

#include <cstring>

namespace shmipc {

namespace {
bool name_is(const NamedEntry &e, std::string_view n) {
    // n.size() <= kMaxNamedLength: both reads stay inside e.name.
    return std::memcmp(e.name, n.data(), n.size()) == 0 && e.name[n.size()] == '\0';
}
// Attempts of a lock-free reader that keeps meeting entries changing under it.
constexpr int kReadAttempts = 64;
} // namespace

void Directory::check_name(std::string_view name) {
    if (name.empty() || name.size() > kMaxNamedLength || name.find('\0') != name.npos)
        throw InvalidArgument("a heap object name is 1.." + std::to_string(kMaxNamedLength) +
                              " bytes without NUL, not " + std::to_string(name.size()) + " bytes");
}

std::string Directory::where(const NamedEntry &e) const {
    const NamedEntry *first = ctl_->named, *end = ctl_->named + kMaxNamed;
    if (&e >= first && &e < end)
        return "directory entry " + std::to_string(&e - first);
    return "directory entry '" + std::string(e.name, ::strnlen(e.name, sizeof e.name)) +
           "' (overflow page)";
}

DirPage *Directory::page_at(std::uint64_t off, std::size_t index) const {
    auto fail = [&](const std::string &why) {
        throw CorruptSegment(segs_->what() + ": directory page " + std::to_string(index) + " " +
                             why);
    };
    if (index >= kMaxDirPages)
        fail("is one too many (a cycle of scribbled links?)");
    if (off < kBlockHeaderSize)
        fail("has offset " + std::to_string(off));
    const std::uint64_t w = free_->checked_word(off - kBlockHeaderSize);
    if (word_state(w) != kUsed || word_units(w) * kHeapUnit - kBlockHeaderSize < sizeof(DirPage))
        fail("is not an allocated block of a page's size");
    auto *p = static_cast<DirPage *>(segs_->ptr(off));
    if (p->magic != kDirPageMagic)
        fail("has a bad magic");
    return p;
}

NamedEntry *Directory::add_page() {
    std::atomic<std::uint64_t> *link = &ctl_->dir_next;
    std::size_t n = 0;
    // SYNC POINT: acquire loads of the links, pairs with the release stores below (ours, made
    // earlier under the same lock, or another locker's).
    for (std::uint64_t off = link->load(std::memory_order_acquire); off != 0;
         off = link->load(std::memory_order_acquire), ++n)
        link = &page_at(off, n)->next;
    if (n >= kMaxDirPages)
        throw OutOfMemory(segs_->what() + ": directory full (" +
                          std::to_string(kMaxNamed + kMaxDirPages * kDirPageEntries) +
                          " named objects)");
    const std::uint64_t units = units_for(sizeof(DirPage));
    const std::uint64_t fit = free_->find_fit(units, kHeapUnit);
    if (!fit)
        return nullptr;
    const std::uint64_t off = free_->carve(fit, units, kHeapUnit, kOwnerHeld);
    auto *p = static_cast<DirPage *>(segs_->ptr(off));
    std::memset(static_cast<void *>(p), 0, sizeof(DirPage));
    p->magic = kDirPageMagic;
    // SYNC POINT: release, pairs with the acquire loads of the link by walkers (for_each): the
    // page's zeroed entries and magic are written before.
    link->store(off, std::memory_order_release);
    return &p->entries[0];
}

NamedInfo Directory::checked(const NamedEntry &e) const {
    auto fail = [&](const std::string &why) {
        throw CorruptSegment(segs_->what() + ": " + where(e) + " " + why);
    };
    const std::size_t len = ::strnlen(e.name, sizeof e.name);
    if (len == 0 || len == sizeof e.name)
        fail("has no valid name");
    const std::uint64_t off = e.offset, nbytes = e.nbytes;
    if (off < kBlockHeaderSize)
        fail("names offset " + std::to_string(off));
    const std::uint64_t w = free_->checked_word(off - kBlockHeaderSize);
    if (word_state(w) != kUsed)
        fail("names a block that is not allocated");
    if (nbytes == 0 || nbytes > word_units(w) * kHeapUnit - kBlockHeaderSize)
        fail("claims " + std::to_string(nbytes) + " bytes of a " +
             std::to_string(word_units(w) * kHeapUnit - kBlockHeaderSize) + "-byte block");
    return NamedInfo{std::string(e.name, len), e.kind, off, nbytes};
}

template <class F> auto Directory::retrying(F &&f) const -> decltype(f()) {
    for (int attempt = 1;; ++attempt) {
        // SYNC POINT: acquire, pairs with the seq_cst bump of notify_all() by every change: a
        // change we raced with is seen below.
        const std::uint32_t seen = ctl_->named_changed.seq.load(std::memory_order_acquire);
        try {
            return f();
        } catch (const CorruptSegment &) {
            // SYNC POINT: acquire, pairs with the bump of the change we may have raced with
            // (a removal bumps before it frees the block we found free).
            if (attempt >= kReadAttempts ||
                ctl_->named_changed.seq.load(std::memory_order_acquire) == seen)
                throw; // nothing changed meanwhile: the entry really is garbage
        }
    }
}

std::optional<NamedInfo> Directory::find(std::string_view name) const {
    if (name.empty() || name.size() > kMaxNamedLength)
        return std::nullopt;
    return retrying([&]() -> std::optional<NamedInfo> {
        std::optional<NamedInfo> out;
        for_each([&](NamedEntry &e) {
            // SYNC POINT: acquire, pairs with the release store of Ready in publish(): the
            // creator's init and the entry's fields are visible.
            if (e.state.load(std::memory_order_acquire) == kNamedReady && name_is(e, name)) {
                out = checked(e);
                return true;
            }
            return false;
        });
        return out;
    });
}

std::vector<NamedInfo> Directory::list(std::uint32_t kind) const {
    return retrying([&] {
        std::vector<NamedInfo> out;
        for_each([&](NamedEntry &e) {
            // SYNC POINT: acquire, pairs with the release store of Ready in publish().
            if (e.state.load(std::memory_order_acquire) == kNamedReady &&
                (kind == 0 || e.kind == kind))
                out.push_back(checked(e));
            return false;
        });
        return out;
    });
}

Directory::Lookup Directory::lookup(std::string_view name) const {
    Lookup r;
    for_each([&](NamedEntry &e) {
        // SYNC POINT: acquire, pairs with the release store of Ready in publish(), which the
        // creator makes without the lock.
        const std::uint32_t st = e.state.load(std::memory_order_acquire);
        if (st > kNamedReady)
            throw CorruptSegment(segs_->what() + ": " + where(e) + " has state " +
                                 std::to_string(st));
        if (st == kNamedEmpty) {
            if (!r.empty)
                r.empty = &e;
        } else if (!r.found && name_is(e, name)) {
            (void)checked(e);
            r.found = &e;
        }
        return false;
    });
    return r;
}

void Directory::claim(NamedEntry &e, std::string_view name, std::uint32_t kind, std::uint64_t off,
                      std::uint64_t nbytes, std::uint16_t creator) noexcept {
    std::memset(e.name, 0, sizeof e.name);
    std::memcpy(e.name, name.data(), name.size());
    e.kind = kind;
    e.offset = off;
    e.nbytes = nbytes;
    e.creator = creator;
    // SYNC POINT: release, pairs with the acquire loads of state by the lookup of other lockers
    // and by the reaper (drop_dead_creators): the fields are written before.
    e.state.store(kNamedInit, std::memory_order_release);
    notify_all(ctl_->named_changed);
}

void Directory::publish(NamedEntry &e) noexcept {
    // SYNC POINT: release, pairs with the acquire load of state in find()/list(): init's writes
    // to the block come first.
    e.state.store(kNamedReady, std::memory_order_release);
    notify_all(ctl_->named_changed);
}

void Directory::empty_and_free(NamedEntry &e) {
    const std::uint64_t off = e.offset;
    // Empty first (with the bump): a lock-free finder that then sees the block free also sees
    // the change and retries instead of calling it corrupt.
    // SYNC POINT: release, pairs with the acquire loads of state by finders.
    e.state.store(kNamedEmpty, std::memory_order_release);
    notify_all(ctl_->named_changed);
    // Free the block only if it is what the entry says (a scribbled entry leaks, never frees
    // someone else's block).
    if (off < kBlockHeaderSize)
        return;
    const std::uint64_t ho = off - kBlockHeaderSize;
    std::uint64_t w = 0;
    try {
        w = free_->checked_word(ho);
    } catch (const CorruptSegment &) {
        return;
    }
    if (word_state(w) == kUsed)
        (void)free_->release(ho, w);
}

void Directory::abandon(NamedEntry &e) {
    empty_and_free(e);
}

bool Directory::remove(std::string_view name) {
    Lookup r = lookup(name);
    // SYNC POINT: acquire, pairs with the release store of Ready in publish().
    if (!r.found || r.found->state.load(std::memory_order_acquire) != kNamedReady)
        return false;
    empty_and_free(*r.found);
    return true;
}

} // namespace shmipc
