#include "ipc_core/base/deadline.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>

namespace shmipc {

Deadline::Deadline(std::optional<double> timeout_seconds) {
    if (!timeout_seconds)
        return;
    double t = *timeout_seconds;
    if (!(t > 0))
        t = 0; // also catches NaN
    // Cap at ~100 years so the conversion cannot overflow.
    t = std::min(t, 3.0e9);
    end_ = Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t));
}

bool Deadline::expired() const noexcept {
    return end_ && Clock::now() >= *end_;
}

std::chrono::nanoseconds Deadline::remaining() const noexcept {
    if (!end_)
        return std::chrono::nanoseconds::max();
    auto r = *end_ - Clock::now();
    return r.count() > 0 ? std::chrono::duration_cast<std::chrono::nanoseconds>(r)
                         : std::chrono::nanoseconds{0};
}

std::chrono::nanoseconds Deadline::slice() const noexcept {
    return std::min<std::chrono::nanoseconds>(remaining(), kWaitSlice);
}

namespace {
std::atomic<InterruptHook> g_hook{nullptr};
}

void set_interrupt_hook(InterruptHook hook) noexcept {
    g_hook.store(hook);
}

void check_interrupt() {
    if (auto h = g_hook.load(std::memory_order_relaxed))
        h();
}

} // namespace shmipc
