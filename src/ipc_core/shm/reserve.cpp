#include "ipc_core/shm/reserve.hpp"

#include "ipc_core/base/errors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
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

std::uint64_t memory_available_for(int fd) {
    std::uint64_t avail = UINT64_MAX;
    struct statvfs sv {};
    if (::fstatvfs(fd, &sv) == 0 && sv.f_blocks != 0)
        avail = static_cast<std::uint64_t>(sv.f_bavail) * sv.f_frsize;
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

void reserve_space(int fd, std::size_t size) {
    if (size == 0)
        return;
    // Refuse up front what cannot fit: fallocate would otherwise eat all memory (or trigger the
    // cgroup's OOM killer) before failing.
    std::uint64_t avail = memory_available_for(fd);
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
