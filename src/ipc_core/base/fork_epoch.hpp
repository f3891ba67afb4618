// One fork epoch for every kind of object. A process starts in epoch 0; the child of every
// fork() is in the next epoch (bumped by a pthread_atfork child handler installed at static
// initialisation, before any object can exist). An object remembers the epoch it was opened in:
// a different epoch now means "this is a forked child's copy of a parent's object": its locks,
// roles, client slots and names belong to the parent.
//
// Hooks registered with on_fork_child() run in the child right after fork(), before any other
// code of the child: only async-signal-safe work there (drop process-local caches).
#pragma once

#include <cstdint>

namespace shmipc {

[[nodiscard]] std::uint64_t fork_epoch() noexcept;

// Registers `fn` to run in every forked child (never removed; call once per purpose).
void on_fork_child(void (*fn)()) noexcept;

// The epoch an object was opened in.
class ForkStamp {
  public:
    ForkStamp() noexcept : epoch_(fork_epoch()) {}
    // True in a forked child that uses an object its parent opened.
    [[nodiscard]] bool inherited() const noexcept { return epoch_ != fork_epoch(); }
    // The object is this process's own from now on (it re-registered, re-claimed...).
    void renew() noexcept { epoch_ = fork_epoch(); }

  private:
    std::uint64_t epoch_;
};

} // namespace shmipc
