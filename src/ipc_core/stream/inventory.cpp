#include "ipc_core/stream/inventory.hpp"

#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <map>
#include <memory>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

namespace shmipc {

namespace {

std::string xattr(int fd, const char *key) {
    char buf[64];
    ssize_t n = ::fgetxattr(fd, key, buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

bool pid_alive(pid_t pid) {
    return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM);
}

// ".shmipc-tmp-<pid>-<hex>-<n>" -> pid
pid_t temp_creator(const std::string &name) {
    const std::string prefix = ".shmipc-tmp-";
    if (name.rfind(prefix, 0) != 0)
        return 0;
    return static_cast<pid_t>(std::strtol(name.c_str() + prefix.size(), nullptr, 10));
}

bool describe(const std::string &dir, const std::string &name, ObjectInfo &out) {
    std::string path = dir + "/" + name;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!fd)
        return false;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    out.name = name;
    out.size = static_cast<std::uint64_t>(st.st_size);
    out.mode = st.st_mode & 07777;
    out.uid = st.st_uid;
    if (pid_t creator = temp_creator(name)) {
        out.kind = "temp";
        out.owner_pid = creator;
        out.owner_alive = pid_alive(creator);
        out.stale = !out.owner_alive;
        return true;
    }
    SegmentHeader h{};
    if (out.size >= sizeof h &&
        ::pread(fd.get(), &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
        h.magic == kSegmentMagic) {
        out.kind = kind_name(h.kind);
        out.owner_pid = h.creator_pid;
        out.persistent = (h.flags & kFlagPersistent) != 0;
        out.created_unix_ns = h.created_unix_ns;
    } else if (xattr(fd.get(), "user.shmipc.kind") == "stream") {
        out.kind = "stream";
        out.persistent = xattr(fd.get(), "user.shmipc.persistent") == "1";
    } else {
        return false; // not ours
    }
    out.owner_alive = byte_is_locked(fd.get(), kOwnerLockByte);
    out.stale = !out.persistent && !out.owner_alive;
    return true;
}

} // namespace

std::vector<ObjectInfo> list_objects(const std::string &dir) {
    std::vector<ObjectInfo> out;
    std::unique_ptr<DIR, int (*)(DIR *)> d(::opendir(dir.c_str()), ::closedir);
    if (!d)
        return out;
    while (dirent *e = ::readdir(d.get())) {
        std::string name = e->d_name;
        if (name == "." || name == "..")
            continue;
        ObjectInfo info;
        try {
            if (describe(dir, name, info))
                out.push_back(std::move(info));
        } catch (const std::exception &) {
            // unreadable or vanished meanwhile: not listed
        }
    }
    // Extension segments of a heap ("frames.1") live and die with their primary ("frames").
    std::map<std::string, const ObjectInfo *> primaries;
    for (const auto &o : out)
        if (o.kind == "heap")
            primaries[o.name] = &o;
    for (auto &o : out) {
        if (o.kind != "heap-segment")
            continue;
        auto dot = o.name.rfind('.');
        auto it =
            dot == std::string::npos ? primaries.end() : primaries.find(o.name.substr(0, dot));
        if (it != primaries.end()) {
            o.owner_alive = it->second->owner_alive;
            o.persistent = it->second->persistent;
            o.owner_pid = it->second->owner_pid;
            o.stale = it->second->stale;
        } else {
            o.stale = !o.persistent; // orphan: its heap is gone
        }
    }
    std::sort(out.begin(), out.end(),
              [](const ObjectInfo &a, const ObjectInfo &b) { return a.name < b.name; });
    return out;
}

std::vector<std::string> remove_stale_objects(const std::string &dir) {
    std::vector<std::string> removed;
    for (const auto &o : list_objects(dir)) {
        if (!o.stale)
            continue;
        std::string path = dir + "/" + o.name;
        if (o.kind != "temp" && o.kind != "heap-segment") {
            // Re-check under the owner lock so we never remove an object a new owner just took.
            UniqueFd fd(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
            if (!fd || !try_lock_byte(fd.get(), kOwnerLockByte, true))
                continue;
        }
        if (::unlink(path.c_str()) == 0)
            removed.push_back(o.name);
    }
    return removed;
}

} // namespace shmipc
