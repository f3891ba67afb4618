#include "ipc_core/base/fork_epoch.hpp"

#include <array>
#include <atomic>
#include <pthread.h>

namespace shmipc {

namespace {

std::atomic<std::uint64_t> g_epoch{0};
constexpr std::size_t kMaxHooks = 16;
std::array<std::atomic<void (*)()>, kMaxHooks> g_hooks{};
std::atomic<std::size_t> g_hook_count{0};

void in_child() {
    g_epoch.fetch_add(1, std::memory_order_relaxed);
    // SYNC POINT: acquire (count and each hook), pairs with the acq_rel count increment and the
    // release store of the hook in on_fork_child; a slot counted but not yet stored reads null
    // and is skipped.
    std::size_t n = g_hook_count.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n && i < kMaxHooks; ++i)
        if (auto fn = g_hooks[i].load(std::memory_order_acquire))
            fn();
}

// At static initialisation: before any object of this library can be opened.
[[maybe_unused]] const int g_installed = ::pthread_atfork(nullptr, nullptr, &in_child);

} // namespace

std::uint64_t fork_epoch() noexcept {
    return g_epoch.load(std::memory_order_relaxed);
}

void on_fork_child(void (*fn)()) noexcept {
    // SYNC POINT: acq_rel slot claim and release store of the hook, paired with the acquire
    // loads in in_child (each registrant owns the slot it claimed).
    std::size_t i = g_hook_count.fetch_add(1, std::memory_order_acq_rel);
    if (i < kMaxHooks)
        g_hooks[i].store(fn, std::memory_order_release);
}

} // namespace shmipc
