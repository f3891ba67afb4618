// Per-thread caches of small blocks: exact block sizes up to kCacheMaxBlock bytes of payload, so
// the common allocate/free takes no lock and touches no shared line but the block's own header.
//
// A cached block stays allocated in the chain (state Cached, owned by the caching client), so a
// killed process's caches are reclaimed like its other blocks, and a chain walk never sees a
// hole. Cache contents are private memory (header offsets this process checked when it freed
// them), never read from shared memory.
//
// Each heap handle has its ThreadCaches; each thread using the handle gets one ThreadCache. A
// thread that exits leaves its cache as an orphan, adopted by the next new thread of that handle
// or flushed by flush_thread_caches(). A closing handle (or a fork child's copy) marks its caches
// dead; threads drop dead caches from their lists lazily.
#pragma once

#include "ipc_core/heap/layout.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace shmipc {

class ThreadCache {
  public:
    explicit ThreadCache(std::uint64_t serial) : serial_(serial) {}

    // Blocks kept per size class: ~32 KiB of small blocks, 4..64 of each size.
    [[nodiscard]] static std::size_t capacity(std::uint64_t units) noexcept {
        return kCapacity[units - 1];
    }
    // Header offset of a cached block of exactly `units` (1..kCacheClasses), if any.
    [[nodiscard]] bool pop(std::uint64_t units, std::uint64_t &off) noexcept {
        auto &l = lists_[units - 1];
        if (l.empty())
            return false;
        off = l.back();
        l.pop_back();
        return true;
    }
    [[nodiscard]] bool has_room(std::uint64_t units) const noexcept {
        return lists_[units - 1].size() < capacity(units);
    }
    // After has_room() (the block is already marked Cached in its word).
    void push(std::uint64_t units, std::uint64_t off) { lists_[units - 1].push_back(off); }

    // Every cached header offset, emptying the cache.
    template <class F> void drain(F &&f) {
        for (auto &l : lists_) {
            for (std::uint64_t off : l)
                f(off);
            l.clear();
        }
    }
    void clear() noexcept {
        for (auto &l : lists_)
            l.clear();
    }

    [[nodiscard]] std::uint64_t serial() const noexcept { return serial_; }
    std::atomic<bool> orphan{false}; // its thread exited: another thread may adopt it
    std::atomic<bool> dead{false};   // its heap handle closed

  private:
    static constexpr std::array<std::size_t, kCacheClasses> kCapacity = [] {
        std::array<std::size_t, kCacheClasses> c{};
        for (std::size_t u = 1; u <= kCacheClasses; ++u)
            c[u - 1] = std::clamp<std::size_t>(32768 / (u * kHeapUnit), 4, 64);
        return c;
    }();

    std::uint64_t serial_; // the handle it belongs to (serials are never reused)
    std::array<std::vector<std::uint64_t>, kCacheClasses> lists_;
};

// The last cache the calling thread used: one compare on the fast path. constinit and trivially
// destructible, so other files read it without a TLS wrapper call.
struct LastThreadCache {
    std::uint64_t serial = 0;
    ThreadCache *cache = nullptr;
};
extern constinit thread_local LastThreadCache tls_last_thread_cache;

// The caches of one heap handle.
class ThreadCaches {
  public:
    ThreadCaches();
    ~ThreadCaches() { drop_all(); }
    ThreadCaches(const ThreadCaches &) = delete;
    ThreadCaches &operator=(const ThreadCaches &) = delete;

    // The calling thread's cache for this handle.
    [[nodiscard]] ThreadCache *local() {
        const LastThreadCache &last = tls_last_thread_cache;
        if (last.serial == serial_) [[likely]]
            return last.cache;
        return local_slow();
    }
    // Calls f(ThreadCache &) for the caches nobody else can be using: the calling thread's and
    // those of exited threads (orphans are adopted under the same mutex), or, with
    // `all_threads`, every cache (the caller promises no other thread is inside the allocator).
    template <class F> void for_flushable(bool all_threads, F &&f) {
        ThreadCache *mine = find_local();
        std::lock_guard g(mu_);
        for (auto &c : caches_)
            // SYNC POINT: acquire, pairs with the release store of orphan by the exiting
            // thread: its last pushes are visible.
            if (all_threads || c.get() == mine || c->orphan.load(std::memory_order_acquire))
                f(*c);
    }
    // Forgets every cached block without freeing it (the handle is closing and frees its blocks
    // by owner, or it is a fork child's copy whose blocks are the parent's) and marks the caches
    // dead. Takes a new serial, so threads start new caches if the handle is used again.
    void drop_all() noexcept;

  private:
    ThreadCache *local_slow();
    [[nodiscard]] ThreadCache *find_local() const noexcept;

    std::uint64_t serial_;
    std::mutex mu_; // caches_ and adoption of orphans
    std::vector<std::shared_ptr<ThreadCache>> caches_;
};

} // namespace shmipc
