#include "ipc_core/shm/memory_segment.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <linux/fs.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <system_error>
#include <unistd.h>

namespace shmipc {

std::size_t page_size() noexcept {
    static const std::size_t ps = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return ps;
}

const char *kind_name(std::uint32_t kind) noexcept {
    switch (static_cast<SegmentKind>(kind)) {
    case SegmentKind::Heap:
        return "heap";
    case SegmentKind::HeapExtension:
        return "heap-segment";
    case SegmentKind::SharedValue:
        return "value";
    case SegmentKind::MessageQueue:
        return "queue";
    }
    return "unknown";
}

namespace {
// Bytes the kernel could still give to shared memory: the filesystem's free space, and for
// memfds (whose internal mount has no size limit) the memory available to allocate.
std::uint64_t available_for(int fd) {
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
    return avail;
}
} // namespace

void reserve_space(int fd, std::size_t size) {
    if (size == 0)
        return;
    // Refuse up front what cannot fit: fallocate would otherwise eat all memory before failing.
    std::uint64_t avail = available_for(fd);
    if (size > avail)
        throw OutOfMemory("cannot reserve " + std::to_string(size) +
                          " bytes of shared memory: only " + std::to_string(avail) +
                          " bytes are available");
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

namespace {

std::byte *map(int fd, std::size_t size, bool writable) {
    if (size == 0)
        return nullptr;
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = ::mmap(nullptr, size, prot, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        if (errno == ENOMEM)
            throw OutOfMemory("cannot map " + std::to_string(size) +
                              " bytes: address space exhausted");
        throw_errno("mmap");
    }
    return static_cast<std::byte *>(p);
}

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
    if (!S_ISREG(st.st_mode) || !replaceable(fd.get()))
        return false; // foreign or persistent: not ours to remove
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

// A non-persistent object with a SegmentHeader.
bool replaceable_segment(int fd) {
    SegmentHeader h{};
    return ::pread(fd, &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
           h.magic == kSegmentMagic && !(h.flags & kFlagPersistent);
}

} // namespace

std::string temp_shm_path() {
    static std::atomic<unsigned> counter{0};
    char buf[96];
    std::snprintf(buf, sizeof buf, "/dev/shm/.shmipc-tmp-%d-%llx-%u", static_cast<int>(::getpid()),
                  static_cast<unsigned long long>(unix_ns()), counter.fetch_add(1));
    return buf;
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

MemorySegment::MemorySegment(MemorySegment &&o) noexcept {
    *this = std::move(o);
}

MemorySegment &MemorySegment::operator=(MemorySegment &&o) noexcept {
    if (this != &o) {
        reset();
        fd_ = std::move(o.fd_);
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
        writable_ = o.writable_;
        owner_ = std::exchange(o.owner_, false);
        persistent_ = o.persistent_;
        name_ = std::move(o.name_);
        dev_ = o.dev_;
        ino_ = o.ino_;
    }
    return *this;
}

MemorySegment::~MemorySegment() {
    reset();
}

void MemorySegment::reset() noexcept {
    if (data_)
        ::munmap(data_, size_);
    data_ = nullptr;
    if (owner_ && !persistent_ && !name_.empty()) {
        // Remove the name only if it still refers to our file (never someone else's).
        std::string path = shm_path(name_);
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && st.st_ino == ino_ && st.st_dev == dev_)
            ::unlink(path.c_str());
    }
    owner_ = false;
    fd_.reset();
    size_ = 0;
}

UniqueFd MemorySegment::release_fd() noexcept {
    if (data_)
        ::munmap(data_, size_);
    data_ = nullptr;
    size_ = 0;
    owner_ = false;
    return std::move(fd_);
}

void MemorySegment::protect(bool writable) {
    if (data_ && ::mprotect(data_, size_, PROT_READ | (writable ? PROT_WRITE : 0)) != 0)
        throw_errno("mprotect");
    writable_ = writable;
}

MemorySegment MemorySegment::anonymous(std::size_t size, const char *label) {
    UniqueFd fd(::memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd)
        throw_errno("memfd_create");
    if (size && ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
        if (errno == ENOSPC || errno == ENOMEM || errno == EFBIG)
            throw OutOfMemory("cannot create a shared buffer of " + std::to_string(size) +
                              " bytes");
        throw_errno("ftruncate");
    }
    reserve_space(fd.get(), size);
    // Size is fixed from now on: a receiver can never be SIGBUSed by a shrink.
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)
        throw_errno("F_ADD_SEALS");
    MemorySegment s;
    s.data_ = map(fd.get(), size, true);
    s.fd_ = std::move(fd);
    s.size_ = size;
    s.writable_ = true;
    return s;
}

MemorySegment MemorySegment::map_fd(UniqueFd fd, std::size_t size, bool writable) {
    MemorySegment s;
    s.data_ = map(fd.get(), size, writable);
    s.fd_ = std::move(fd);
    s.size_ = size;
    s.writable_ = writable;
    return s;
}

MemorySegment MemorySegment::create_named(std::string_view name, std::size_t size, mode_t mode,
                                          SegmentKind kind, std::uint32_t layout_version,
                                          bool persistent,
                                          const std::function<void(std::byte *)> &init) {
    std::string norm = normalize_shm_name(name);
    if (size < sizeof(SegmentHeader))
        throw InvalidArgument("segment too small");
    if (mode & ~07777u)
        throw InvalidArgument("mode must be permission bits (e.g. 0o600)");
    std::string final_path = shm_path(norm);
    std::string tmp = temp_shm_path();

    UniqueFd fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd)
        throw_errno("open(/dev/shm temporary)");
    struct TmpGuard {
        const std::string &p;
        bool armed = true;
        ~TmpGuard() {
            if (armed)
                ::unlink(p.c_str());
        }
    } guard{tmp};

    // Held for our whole life: tells everyone the owner is alive.
    if (!try_lock_byte(fd.get(), kOwnerLockByte, true))
        throw Error("cannot take owner lock");
    if (::fchmod(fd.get(), mode) != 0)
        throw_errno("fchmod"); // exact, whatever the umask
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
        if (errno == ENOSPC || errno == EFBIG)
            throw OutOfMemory("cannot create a shared segment of " + std::to_string(size) +
                              " bytes");
        throw_errno("ftruncate");
    }
    reserve_space(fd.get(), size);

    MemorySegment s;
    s.data_ = map(fd.get(), size, true);
    s.size_ = size;
    s.writable_ = true;
    auto *h = s.header();
    h->magic = 0; // published complete, but keep readers honest if they race a stale file
    h->kind = static_cast<std::uint32_t>(kind);
    h->layout_version = layout_version;
    h->total_size = size;
    h->creator_pid = static_cast<std::int32_t>(::getpid());
    h->flags = persistent ? kFlagPersistent : 0;
    h->created_unix_ns = unix_ns();
    if (init)
        init(s.data_);
    std::atomic_thread_fence(std::memory_order_release);
    h->magic = kSegmentMagic;

    // Publish atomically; replace a stale object whose owner died.
    publish_named(tmp, norm, replaceable_segment);
    guard.armed = false;
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    s.fd_ = std::move(fd);
    s.owner_ = true;
    s.persistent_ = persistent;
    s.name_ = norm;
    s.dev_ = st.st_dev;
    s.ino_ = st.st_ino;
    return s;
}

MemorySegment MemorySegment::attach_named(std::string_view name, SegmentKind kind,
                                          std::uint32_t layout_version, std::size_t min_size) {
    std::string norm = normalize_shm_name(name);
    std::string path = shm_path(norm);
    bool writable = true;
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
    if (!fd && (errno == EACCES || errno == EROFS)) {
        fd.reset(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
        writable = false;
    }
    if (!fd) {
        if (errno == ENOENT)
            throw OsError(ENOENT, "no shared-memory object named '" + norm + "'");
        throw_errno("open");
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    const std::string what =
        "'" + norm + "' is not a shmipc " + kind_name(static_cast<std::uint32_t>(kind));
    if (!S_ISREG(st.st_mode))
        throw CorruptSegment(what + ": not a regular file");
    auto fsize = static_cast<std::size_t>(st.st_size);
    if (fsize < sizeof(SegmentHeader) || fsize < min_size)
        throw CorruptSegment(what + ": truncated (" + std::to_string(fsize) + " bytes)");
    // Read the header with pread first: nothing of the mapping is trusted before this.
    SegmentHeader h{};
    if (::pread(fd.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h))
        throw CorruptSegment(what + ": unreadable header");
    if (h.magic != kSegmentMagic)
        throw CorruptSegment(what + ": bad magic");
    if (h.kind != static_cast<std::uint32_t>(kind))
        throw CorruptSegment("'" + norm + "' is a shmipc " + kind_name(h.kind) + ", not a " +
                             kind_name(static_cast<std::uint32_t>(kind)));
    if (h.layout_version != layout_version)
        throw CorruptSegment(what + ": layout version " + std::to_string(h.layout_version) +
                             ", expected " + std::to_string(layout_version));
    if (h.total_size != fsize)
        throw CorruptSegment(what + ": header says " + std::to_string(h.total_size) +
                             " bytes, file has " + std::to_string(fsize));
    MemorySegment s;
    s.data_ = map(fd.get(), fsize, writable);
    s.fd_ = std::move(fd);
    s.size_ = fsize;
    s.writable_ = writable;
    s.name_ = norm;
    s.dev_ = st.st_dev;
    s.ino_ = st.st_ino;
    return s;
}

bool unlink_named(std::string_view name) {
    std::string norm = normalize_shm_name(name);
    if (::unlink(shm_path(norm).c_str()) == 0)
        return true;
    if (errno == ENOENT)
        return false;
    throw_errno("unlink");
}

} // namespace shmipc
