#include "ipc_core/shm/publish.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/shm/reserve.hpp"
#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shmipc {

namespace {

std::uint64_t unix_ns() {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
}

// The object at `path` is stale if `replaceable` says it is ours and not persistent, and
// nobody holds its owner lock. If so, we take that lock (so no other creator can also decide
// to remove it), check the name still refers to the same file, and unlink it. Returns true if
// the name is now free.
bool remove_if_stale(const std::string &path, const std::function<bool(int)> &replaceable) {
    // O_NONBLOCK: never hang on a FIFO someone planted under the name.
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    if (!fd)
        return errno == ENOENT; // vanished meanwhile: free
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || !replaceable(fd.get()))
        return false; // foreign, another user's, or persistent: not ours to remove
    if (!try_lock_byte(fd.get(), kOwnerLockByte, true))
        return false; // owner alive
    struct stat now {};
    if (::stat(path.c_str(), &now) != 0)
        return errno == ENOENT;
    if (now.st_ino != st.st_ino || now.st_dev != st.st_dev)
        return false; // replaced: retry
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        throw_errno("unlink");
    return true;
}

// Unlinks the temporary unless disarmed (a failed creation leaves nothing behind).
struct TmpGuard {
    const std::string &path;
    bool armed = true;
    ~TmpGuard() {
        if (armed)
            ::unlink(path.c_str());
    }
};

} // namespace

void check_mode(mode_t mode) {
    if (mode & ~0777u)
        throw InvalidArgument("mode must be permission bits within 0o777 (e.g. 0o600), got 0o" +
                              [&] {
                                  char b[16];
                                  std::snprintf(b, sizeof b, "%o", static_cast<unsigned>(mode));
                                  return std::string(b);
                              }());
}

std::string temp_shm_path() {
    static std::atomic<unsigned> counter{0};
    char buf[96];
    std::snprintf(buf, sizeof buf, "/dev/shm/.shmipc-tmp-%d-%llx-%u", static_cast<int>(::getpid()),
                  static_cast<unsigned long long>(unix_ns()), counter.fetch_add(1));
    return buf;
}

UniqueFd create_temporary(const std::string &tmp_path) {
    UniqueFd fd(::open(tmp_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd)
        throw_errno("open(/dev/shm temporary)");
    // Held for the object's whole life: tells everyone the owner is alive.
    if (!try_lock_byte(fd.get(), kOwnerLockByte, true)) {
        ::unlink(tmp_path.c_str());
        throw Error("cannot take the owner lock of a fresh temporary");
    }
    return fd;
}

bool replaceable_segment(int fd) {
    SegmentHeader h{};
    return read_segment_header(fd, h) && !(h.flags & kFlagPersistent);
}

void publish_named(const std::string &tmp, std::string_view norm,
                   const std::function<bool(int)> &replaceable) {
    const std::string final_path = shm_path(norm);
    for (int attempt = 0;; ++attempt) {
        if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_path.c_str(), RENAME_NOREPLACE) == 0)
            return;
        if (errno != EEXIST)
            throw_errno("renameat2");
        if (attempt > 100 || !remove_if_stale(final_path, replaceable))
            throw OsError(EEXIST, "shared-memory object '" + std::string(norm) + "' exists");
    }
}

bool unlink_named(std::string_view name) {
    std::string norm = normalize_shm_name(name);
    if (::unlink(shm_path(norm).c_str()) == 0)
        return true;
    if (errno == ENOENT)
        return false;
    throw_errno("unlink");
}

NamedSegment::NamedSegment(std::string_view name) : norm_(normalize_shm_name(name)) {}

MemorySegment NamedSegment::create() const {
    if (size_ < sizeof(SegmentHeader))
        throw InvalidArgument("segment too small");
    check_mode(mode_);
    const std::string tmp = temp_shm_path();
    UniqueFd fd = create_temporary(tmp);
    TmpGuard guard{tmp};
    if (::fchmod(fd.get(), mode_) != 0)
        throw_errno("fchmod"); // exact, whatever the umask
    if (::ftruncate(fd.get(), static_cast<off_t>(size_)) != 0) {
        if (errno == ENOSPC || errno == EFBIG)
            throw OutOfMemory("cannot create a shared segment of " + std::to_string(size_) +
                              " bytes");
        throw_errno("ftruncate");
    }
    reserve_space(fd.get(), size_);

    MemorySegment s = MemorySegment::map_fd(std::move(fd), size_, true);
    auto *h = s.header();
    h->magic = 0; // published complete, but keep readers honest if they race a stale file
    h->kind = static_cast<std::uint32_t>(kind_);
    h->layout_version = layout_;
    h->total_size = size_;
    h->creator_pid = static_cast<std::int32_t>(::getpid());
    h->flags = persistent_ ? kFlagPersistent : 0;
    h->created_unix_ns = unix_ns();
    if (init_)
        init_(s.data());
    // SYNC POINT: release, pairs with the acquire fence after the header check of attach.
    std::atomic_thread_fence(std::memory_order_release);
    h->magic = kSegmentMagic;

    // Publish atomically; replace a stale object whose owner died.
    publish_named(tmp, norm_, replaceable_segment);
    guard.armed = false;
    s.become_owner(norm_, persistent_);
    return s;
}

MemorySegment NamedSegment::attach() const {
    const std::string what =
        std::string(kind_name(static_cast<std::uint32_t>(kind_))) + " '" + norm_ + "'";
    OpenedName o = open_shm_name(norm_, OpenAccess::PreferWrite, what);
    check_owner(o.st, trust_, what);
    auto fsize = static_cast<std::size_t>(o.st.st_size);
    const std::string bad =
        "'" + norm_ + "' is not a shmipc " + kind_name(static_cast<std::uint32_t>(kind_));
    if (fsize < sizeof(SegmentHeader) || fsize < min_size_)
        throw CorruptSegment(bad + ": truncated (" + std::to_string(fsize) + " bytes)");
    // Read the header with pread first: nothing of the mapping is trusted before this.
    SegmentHeader h{};
    if (!read_segment_header(o.fd.get(), h))
        throw CorruptSegment(bad + ": bad magic");
    if (h.kind != static_cast<std::uint32_t>(kind_))
        throw CorruptSegment("'" + norm_ + "' is a shmipc " + kind_name(h.kind) + ", not a " +
                             kind_name(static_cast<std::uint32_t>(kind_)));
    if (h.layout_version != layout_)
        throw CorruptSegment(bad + ": layout version " + std::to_string(h.layout_version) +
                             ", expected " + std::to_string(layout_));
    if (h.total_size != fsize)
        throw CorruptSegment(bad + ": header says " + std::to_string(h.total_size) +
                             " bytes, file has " + std::to_string(fsize));
    std::atomic_thread_fence(std::memory_order_acquire);
    MemorySegment s = MemorySegment::map_fd(std::move(o.fd), fsize, o.writable);
    s.set_name(norm_);
    return s;
}

} // namespace shmipc
