#include "ipc_core/shm/sigbus_guard.hpp"

#include <array>
#include <csignal>
#include <cstdint>
#include <mutex>
#include <sys/mman.h>
#include <unistd.h>

namespace shmipc {

namespace {

struct Guarded {
    std::atomic<std::uintptr_t> begin{0}; // 0 = free entry
    std::atomic<std::uintptr_t> end{0};
    std::atomic<std::atomic<bool> *> truncated{nullptr};
};

constexpr std::uintptr_t kReserved = 1; // begin while an entry is being filled
std::array<Guarded, kMaxGuardedMappings> g_guarded{};
std::atomic<std::size_t> g_absorbed{0};
struct sigaction g_previous {};
std::once_flag g_install_once;

void chain(int sig, siginfo_t *info, void *ctx) {
    if (g_previous.sa_flags & SA_SIGINFO) {
        if (g_previous.sa_sigaction)
            g_previous.sa_sigaction(sig, info, ctx);
        return;
    }
    if (g_previous.sa_handler == SIG_IGN)
        return;
    if (g_previous.sa_handler == SIG_DFL || g_previous.sa_handler == nullptr) {
        // Default action: die of SIGBUS, as without us.
        ::signal(sig, SIG_DFL);
        ::raise(sig);
        return;
    }
    g_previous.sa_handler(sig);
}

// Async-signal-safe: atomics and one mmap.
void on_sigbus(int sig, siginfo_t *info, void *ctx) {
    auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
    for (auto &g : g_guarded) {
        // SYNC POINT: acquire, pairs with the release store of begin in guard_mapping: end and
        // truncated of a published entry are seen.
        std::uintptr_t b = g.begin.load(std::memory_order_acquire);
        if (b <= kReserved || addr < b || addr >= g.end.load(std::memory_order_acquire))
            continue;
        const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        void *p = reinterpret_cast<void *>(addr & ~(page - 1));
        if (::mmap(p, page, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1,
                   0) == MAP_FAILED)
            break; // cannot absorb it: let the previous handler (default: die) act
        // SYNC POINT: release of the flag, pairs with the loads of truncated() by the kinds'
        // checks (the access that faulted is ordered before it).
        if (auto *flag = g.truncated.load(std::memory_order_acquire))
            flag->store(true, std::memory_order_release);
        g_absorbed.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    chain(sig, info, ctx);
}

void install() {
    struct sigaction sa {};
    sa.sa_sigaction = &on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous);
}

} // namespace

void guard_mapping(void *addr, std::size_t len, std::atomic<bool> *truncated) noexcept {
    if (!addr || len == 0)
        return;
    std::call_once(g_install_once, install);
    auto b = reinterpret_cast<std::uintptr_t>(addr);
    for (auto &g : g_guarded) {
        // Reserve the entry, fill it, then publish begin: the handler trusts only published ones.
        std::uintptr_t expected = 0;
        // SYNC POINT: acquire, pairs with the acq_rel CAS of unguard_mapping that freed the entry.
        if (!g.begin.compare_exchange_strong(expected, kReserved, std::memory_order_acquire))
            continue;
        g.end.store(b + len, std::memory_order_relaxed);
        g.truncated.store(truncated, std::memory_order_relaxed);
        // SYNC POINT: release, pairs with the acquire load of begin in on_sigbus.
        g.begin.store(b, std::memory_order_release);
        return;
    }
}

void unguard_mapping(void *addr) noexcept {
    auto b = reinterpret_cast<std::uintptr_t>(addr);
    for (auto &g : g_guarded) {
        std::uintptr_t expected = b;
        // SYNC POINT: acq_rel, pairs with the acquire CAS of the next guard_mapping of the entry
        // and with the handler's acquire load (a freed entry is no longer trusted).
        if (g.begin.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) {
            g.truncated.store(nullptr, std::memory_order_release);
            return;
        }
    }
}

std::size_t absorbed_sigbus_faults() noexcept {
    return g_absorbed.load(std::memory_order_relaxed);
}

} // namespace shmipc
