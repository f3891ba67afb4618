// One crash-point facility for the tests of every kind: named points in the engine where a test
// makes the process die (SIGKILL) or stall forever (to be stopped or killed from outside) the
// countdown-th time it passes there. Nothing is armed unless a test arms it; a disarmed point
// costs one relaxed load.
//
// Points (the name says where the process is when it dies):
//   queue.put.claimed    a slot claimed for writing, nothing written
//   queue.put.half       half of the message written
//   queue.get.claimed    a slot claimed for reading, nothing copied
//   queue.get.copied     the message copied out, the slot not yet released
//   value.write.half     half of the payload written into the non-current slot (writer lock held)
//   heap.locked          inside the heap lock (stats())
//   topic.publish.header_held  a sample's header held by the heap (announced in inflight),
//                        its data block still the publisher's (topic lock held)
//   dict.<step>          each step of a dict store (table_filled, table_retired,
//                        table_published, clearing, entry_retired, entry_replaced,
//                        entry_inserted, erase_retired, erase_unlinked, clear_unlinked)
#pragma once

#include <atomic>
#include <string>
#include <string_view>

namespace shmipc {

enum class CrashAction { Kill, Stall };

// The `countdown`-th pass at `point` (1 = the next) kills (or stalls) the calling process.
// One point is armed at a time; countdown 0 disarms.
void arm_crash_point(std::string_view point, int countdown, CrashAction action = CrashAction::Kill);
void disarm_crash_point() noexcept;

namespace detail {
extern std::atomic<bool> g_crash_armed;
void crash_point_slow(const char *point) noexcept;
} // namespace detail

inline void crash_point(const char *point) noexcept {
    if (detail::g_crash_armed.load(std::memory_order_relaxed)) [[unlikely]]
        detail::crash_point_slow(point);
}

} // namespace shmipc
