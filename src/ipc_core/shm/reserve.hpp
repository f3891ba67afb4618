// Reserving shared memory up front, so that a full /dev/shm or an exhausted memory cgroup is an
// error at creation (OutOfMemory -> MemoryError), never a SIGBUS or an OOM kill later.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace shmipc {

// Bytes this process could still get: the smallest of the filesystem's free space (for fds on a
// sized tmpfs; a memfd's internal mount has none), MemAvailable + free swap, and the headroom
// (memory.max - memory.current) of every memory cgroup (v2, or v1's limit) that contains us.
[[nodiscard]] std::uint64_t memory_available_for(int fd);

// The tightest memory cgroup headroom of this process, if any limit applies.
[[nodiscard]] std::optional<std::uint64_t> cgroup_headroom();

// Reserves `size` bytes of the fd's file now (posix_fallocate), after checking that they are
// available. Throws OutOfMemory naming what was asked and what is available. The filesystem is
// asked every time; memory and cgroup headroom are read again for any reservation over 16 MiB
// and otherwise at least every 100 ms or 16 MiB reserved (reading them costs more than
// creating a small buffer).
void reserve_space(int fd, std::size_t size);

} // namespace shmipc
