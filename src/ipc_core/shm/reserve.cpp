#include "ipc_core/shm/reserve.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <mutex>
#include <string>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <unistd.h>

namespace shmipc {

namespace {

// A number from a one-line cgroup file ("max" = no limit).
std::optional<std::uint64_t> read_limit(const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "re");
    if (!f)
        return std::nullopt;
    char buf[64] = {};
    bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
    std::fclose(f);
    if (!ok || std::strncmp(buf, "max", 3) == 0)
        return std::nullopt;
    char *end = nullptr;
    unsigned long long v = std::strtoull(buf, &end, 10);
    if (end == buf)
        return std::nullopt;
    return static_cast<std::uint64_t>(v);
}

// The cgroup v2 path of this process ("0::/a/b"), or the memory controller's v1 path.
std::optional<std::pair<std::string, bool>> own_cgroup() {
    FILE *f = std::fopen("/proc/self/cgroup", "re");
    if (!f)
        return std::nullopt;
    char line[4096];
    std::optional<std::pair<std::string, bool>> v1, v2;
    while (std::fgets(line, sizeof line, f)) {
        std::string s(line);
        if (!s.empty() && s.back() == '\n')
            s.pop_back();
        if (s.rfind("0::", 0) == 0)
            v2 = std::make_pair(s.substr(3), true);
        else if (auto p = s.find(":memory:"); p != std::string::npos)
            v1 = std::make_pair(s.substr(p + 8), false);
    }
    std::fclose(f);
    return v1 ? v1 : v2;
}

} // namespace

std::optional<std::uint64_t> cgroup_headroom() {
    auto cg = own_cgroup();
    if (!cg)
        return std::nullopt;
    auto [path, v2] = *cg;
    const std::string root = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    const char *max_file = v2 ? "/memory.max" : "/memory.limit_in_bytes";
    const char *cur_file = v2 ? "/memory.current" : "/memory.usage_in_bytes";
    std::optional<std::uint64_t> best;
    // Every ancestor's limit applies; walk up to the root.
    for (int depth = 0; depth < 64; ++depth) {
        std::string dir = root + (path == "/" ? "" : path);
        if (auto max = read_limit(dir + max_file); max && *max < (std::uint64_t{1} << 62)) {
            std::uint64_t cur = read_limit(dir + cur_file).value_or(0);
            std::uint64_t room = *max > cur ? *max - cur : 0;
            best = best ? std::min(*best, room) : room;
        }
        if (path.empty() || path == "/")
            break;
        auto slash = path.find_last_of('/');
        path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
    }
    return best;
}

namespace {

// Free space of the fd's filesystem (a sized tmpfs such as /dev/shm; a memfd's internal mount
// has no size: UINT64_MAX). One fstatvfs.
std::uint64_t filesystem_available(int fd) {
    struct statvfs sv {};
    if (::fstatvfs(fd, &sv) == 0 && sv.f_blocks != 0)
        return static_cast<std::uint64_t>(sv.f_bavail) * sv.f_frsize;
    return UINT64_MAX;
}

// MemAvailable + free swap, and the tightest cgroup headroom: about a dozen syscalls and the
// parsing of /proc and cgroupfs files (most of a small buffer's creation cost if done each time).
std::uint64_t system_available() {
    std::uint64_t avail = UINT64_MAX;
    struct sysinfo si {};
    if (::sysinfo(&si) == 0) {
        std::uint64_t mem =
            (static_cast<std::uint64_t>(si.freeram) + si.bufferram + si.freeswap) * si.mem_unit;
        // freeram undercounts reclaimable cache; MemAvailable is better when readable.
        if (FILE *f = std::fopen("/proc/meminfo", "re")) {
            char line[256];
            while (std::fgets(line, sizeof line, f)) {
                unsigned long long kb = 0;
                if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                    mem = kb * 1024ULL + static_cast<std::uint64_t>(si.freeswap) * si.mem_unit;
                    break;
                }
            }
            std::fclose(f);
        }
        avail = std::min(avail, mem);
    }
    // Shared memory is charged to the memory cgroup of whoever touches it first: us.
    if (auto room = cgroup_headroom())
        avail = std::min(avail, *room);
    return avail;
}

// system_available() as last read, less what this process reserved since. Small reservations
// are checked against it instead of reading the system again: at most kUncheckedBudget bytes
// (and a sixteenth of the headroom) over kMaxAge go unchecked, so a stale value (memory taken by
// others, or this process moved to a tighter cgroup) can let through at most that much before
// the next full read, where fallocate or the next check sees the truth. Anything larger is
// always checked in full.
struct HeadroomCache {
    std::mutex mu;
    std::uint64_t avail = 0;
    std::uint64_t reserved = 0; // bytes let through on `avail` since it was read
    std::chrono::steady_clock::time_point read_at{};
    bool valid = false;
};
constexpr std::uint64_t kUncheckedBudget = std::uint64_t{16} << 20;
constexpr std::chrono::milliseconds kMaxAge{100};

HeadroomCache &headroom_cache() {
    static HeadroomCache *c = new HeadroomCache(); // never destroyed: used until exit
    return *c;
}

// What system_available() would say for a reservation of `size` (see HeadroomCache).
std::uint64_t system_available_for(std::uint64_t size) {
    HeadroomCache &c = headroom_cache();
    const auto now = std::chrono::steady_clock::now();
    // try_lock: a thread that finds the cache busy (or a fork child whose parent thread held
    // it) reads the system itself rather than wait.
    std::unique_lock lk(c.mu, std::try_to_lock);
    if (lk && c.valid && now - c.read_at < kMaxAge &&
        c.reserved + size <= std::min(c.avail / 16, kUncheckedBudget)) {
        const std::uint64_t before = c.avail - c.reserved;
        c.reserved += size;
        return before;
    }
    const std::uint64_t sys = system_available();
    if (lk) {
        c.avail = sys;
        c.reserved = size <= sys ? size : 0;
        c.read_at = now;
        c.valid = true;
    }
    return sys;
}

} // namespace

std::uint64_t memory_available_for(int fd) {
    return std::min(filesystem_available(fd), system_available());
}

void reserve_space(int fd, std::size_t size) {
    if (size == 0)
        return;
    // Refuse up front what cannot fit: fallocate would otherwise eat all memory (or trigger the
    // cgroup's OOM killer) before failing.
    std::uint64_t avail = std::min(filesystem_available(fd), system_available_for(size));
    if (size > avail)
        throw OutOfMemory("cannot reserve " + std::to_string(size) +
                          " bytes of shared memory: only " + std::to_string(avail) +
                          " bytes are available (free memory, /dev/shm and memory cgroup limits)");
    int err = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (err == 0)
        return;
    if (err == ENOSPC || err == ENOMEM || err == EFBIG) {
        struct statvfs sv {};
        std::string free_part;
        if (::fstatvfs(fd, &sv) == 0)
            free_part = std::to_string(static_cast<unsigned long long>(sv.f_bavail) * sv.f_frsize) +
                        " bytes free";
        else
            free_part = "free space unknown";
        throw OutOfMemory("cannot reserve " + std::to_string(size) + " bytes of shared memory (" +
                          free_part + " in its filesystem)");
    }
    throw_errno(err, "posix_fallocate");
}

} // namespace shmipc
