// Internal to channel/: what the files of Channel share. The liveness test of an endpoint, the
// spin policy of every channel wait and that wait itself (Channel::wait_on). Not part of any API.
//
// Where the code is:
//   channel.cpp          open/create, attach-time validation and geometry, list, remove
//   channel_endpoint.cpp roles (claim, release, close, abort), endpoint liveness, peer death
//   channel_send.cpp     the sender's operations
//   channel_recv.cpp     the receiver's operations and poll
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/channel/channel.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/sync/waiter.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace shmipc {

namespace channel_detail {

inline const char *role_name(ChannelRole r) {
    return r == ChannelRole::Sender ? "sender" : "receiver";
}

// Spreads (segment, byte offset) over the user lock range (channel_endpoint.cpp).
std::uint64_t lock_index_for(std::uint64_t off);

// Is the endpoint `r` of the channel at `offset` alive (its token set and its lock byte locked,
// or held by this process)? (channel_endpoint.cpp)
bool endpoint_alive_at(Heap &heap, std::uint64_t offset, ChannelControl *c, ChannelRole r);
// A claimed endpoint whose process is gone: token set, lock byte free. (channel_endpoint.cpp)
bool endpoint_dead_at(Heap &heap, std::uint64_t offset, ChannelControl *c, ChannelRole r);

// Pure spinning before a channel wait starts yielding the core between checks.
inline constexpr std::chrono::microseconds kYieldAfter{1};

// The channel's `spin` setting as a policy; a wait never spins past its deadline.
inline SpinPolicy spin_policy(std::chrono::nanoseconds spin, const Deadline &d) {
    spin = std::min(spin, d.remaining());
    std::chrono::nanoseconds pure = std::min<std::chrono::nanoseconds>(spin, kYieldAfter);
    return SpinPolicy{pure, spin - pure};
}

} // namespace channel_detail

template <class Ready>
bool Channel::wait_on(FutexWord &w, Ready &&ready, ChannelRole peer, const Deadline &deadline,
                      bool &peer_dead) {
    bool first = true;
    // SYNC POINT: futex wait on w (not_empty or not_full, spin first): pairs with the
    // wake_if_waiting/notify_all of the peer after its release store of head or tail (or closed, or
    // its token); `ready` re-reads them with acquire loads.
    return spin_then_wait(
        w, ready,
        [&] {
            auto s = between_slices(peer, deadline, first);
            first = false;
            if (s.count() < 0) {
                peer_dead = true;
                return std::chrono::nanoseconds{0};
            }
            return s;
        },
        channel_detail::spin_policy(spin(), deadline));
}

} // namespace shmipc
