#include "ipc_core/heap/thread_cache.hpp"

namespace shmipc {

constinit thread_local LastThreadCache tls_last_thread_cache{};

namespace {

std::atomic<std::uint64_t> g_serial{1};

// Every cache the calling thread uses (of any handle); marks them orphans when the thread exits.
struct ThreadCacheList {
    std::vector<std::shared_ptr<ThreadCache>> all;
    ~ThreadCacheList() {
        for (auto &c : all)
            // SYNC POINT: release, pairs with the acquire exchange of adoption in local_slow()
            // and the acquire load in for_flushable(): the cache's lists are final.
            c->orphan.store(true, std::memory_order_release);
    }
};
thread_local ThreadCacheList tls_caches;

} // namespace

ThreadCaches::ThreadCaches() : serial_(g_serial.fetch_add(1, std::memory_order_relaxed)) {}

ThreadCache *ThreadCaches::find_local() const noexcept {
    for (auto &c : tls_caches.all)
        if (c->serial() == serial_)
            return c.get();
    return nullptr;
}

ThreadCache *ThreadCaches::local_slow() {
    ThreadCache *found = find_local();
    if (!found) {
        // Caches of closed handles are dropped here, lazily.
        // SYNC POINT: acquire, pairs with the release store of dead in drop_all().
        std::erase_if(tls_caches.all,
                      [](const auto &c) { return c->dead.load(std::memory_order_acquire); });
        std::shared_ptr<ThreadCache> c;
        {
            std::lock_guard g(mu_);
            for (auto &x : caches_)
                // SYNC POINT: acquire, pairs with the release store of orphan by the exiting
                // thread.
                if (x->orphan.exchange(false, std::memory_order_acquire)) {
                    c = x;
                    break;
                }
            if (!c) {
                c = std::make_shared<ThreadCache>(serial_);
                caches_.push_back(c);
            }
        }
        tls_caches.all.push_back(c);
        found = c.get();
    }
    tls_last_thread_cache = LastThreadCache{serial_, found};
    return found;
}

void ThreadCaches::drop_all() noexcept {
    std::lock_guard g(mu_);
    for (auto &c : caches_) {
        c->clear();
        // SYNC POINT: release, pairs with the acquire load in local_slow()'s cleanup.
        c->dead.store(true, std::memory_order_release);
    }
    caches_.clear();
    serial_ = g_serial.fetch_add(1, std::memory_order_relaxed);
}

} // namespace shmipc
