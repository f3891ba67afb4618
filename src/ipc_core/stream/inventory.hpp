// What shmipc objects live in /dev/shm, who owns them, and which are stale.
//
// Named objects with a SegmentHeader (heaps, values, queues) are recognised by their magic;
// streams by the user.shmipc.kind xattr; ".shmipc-tmp-<pid>-..." files are objects whose
// creator died before publishing them. Liveness comes from the owner's OFD lock byte
// (kOwnerLockByte): the kernel drops it when the owner dies.
#pragma once

#include <cstdint>
#include <string>
#include <sys/types.h>
#include <vector>

namespace shmipc {

struct ObjectInfo {
    std::string name;       // without the leading '/'
    std::string kind;       // "heap", "heap-segment", "value", "queue", "stream", "temp"
    std::uint64_t size = 0; // bytes of the file
    mode_t mode = 0;        // permission bits
    uid_t uid = 0;
    std::int32_t owner_pid = 0; // creator's pid when recorded (0: unknown)
    bool persistent = false;
    bool owner_alive = false;
    bool stale = false; // not persistent and nobody owns it: removable
    std::uint64_t created_unix_ns = 0;
};

// Every shmipc object in `dir` (default /dev/shm); files we cannot read are skipped.
[[nodiscard]] std::vector<ObjectInfo> list_objects(const std::string &dir = "/dev/shm");

// Removes every stale object (and leftover temporaries of dead creators). Returns their names.
std::vector<std::string> remove_stale_objects(const std::string &dir = "/dev/shm");

} // namespace shmipc
