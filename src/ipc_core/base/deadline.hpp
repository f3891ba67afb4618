// Timeouts and interruption for every blocking call of the engine.
//
// Blocking calls never sleep longer than kWaitSlice at a time; between slices they call
// check_interrupt(), which the Python binding sets to a hook that takes the GIL and runs
// PyErr_CheckSignals (so Ctrl-C raises KeyboardInterrupt within ~100 ms). The hook may throw.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace shmipc {

using Clock = std::chrono::steady_clock;
inline constexpr std::chrono::milliseconds kWaitSlice{50};

class Deadline {
  public:
    // nullopt: wait forever; 0: do not wait; negative is treated as 0.
    explicit Deadline(std::optional<double> timeout_seconds);
    static Deadline never() { return Deadline(std::nullopt); }

    [[nodiscard]] bool infinite() const noexcept { return !end_; }
    [[nodiscard]] bool expired() const noexcept;
    // Time to sleep now: min(remaining, kWaitSlice), never negative.
    [[nodiscard]] std::chrono::nanoseconds slice() const noexcept;
    [[nodiscard]] std::chrono::nanoseconds remaining() const noexcept;

  private:
    std::optional<Clock::time_point> end_;
};

using InterruptHook = void (*)();
// Installed once by the binding; nullptr (the default) checks nothing.
void set_interrupt_hook(InterruptHook hook) noexcept;
// Runs the hook; may throw whatever the hook throws.
void check_interrupt();

} // namespace shmipc
