#include "ipc_core/testing/crash_point.hpp"

#include <csignal>
#include <cstring>
#include <mutex>
#include <unistd.h>

namespace shmipc {

namespace detail {
std::atomic<bool> g_crash_armed{false};
} // namespace detail

namespace {
std::mutex g_mu;
std::string g_point;
int g_countdown = 0;
CrashAction g_action = CrashAction::Kill;
} // namespace

void arm_crash_point(std::string_view point, int countdown, CrashAction action) {
    std::lock_guard g(g_mu);
    g_point.assign(point);
    g_countdown = countdown;
    g_action = action;
    detail::g_crash_armed.store(countdown > 0, std::memory_order_relaxed);
}

void disarm_crash_point() noexcept {
    std::lock_guard g(g_mu);
    g_countdown = 0;
    detail::g_crash_armed.store(false, std::memory_order_relaxed);
}

void detail::crash_point_slow(const char *point) noexcept {
    CrashAction action;
    {
        std::lock_guard g(g_mu);
        if (g_countdown <= 0 || g_point != point)
            return;
        if (--g_countdown > 0)
            return;
        action = g_action;
    }
    if (action == CrashAction::Kill)
        ::raise(SIGKILL);
    for (;;)
        ::pause(); // stalled here (holding whatever we hold) until killed
}

} // namespace shmipc
