#include "ipc_core/shm/memory_segment.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/shm/sigbus_guard.hpp"
#include "ipc_core/sync/liveness.hpp"

#include <cerrno>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
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

bool read_segment_header(int fd, SegmentHeader &out) noexcept {
    return ::pread(fd, &out, sizeof out, 0) == static_cast<ssize_t>(sizeof out) &&
           out.magic == kSegmentMagic;
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
} // namespace

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
        renewed_ = std::exchange(o.renewed_, false);
        truncated_ = std::move(o.truncated_);
        stamp_ = o.stamp_;
        name_ = std::move(o.name_);
        dev_ = o.dev_;
        ino_ = o.ino_;
    }
    return *this;
}

MemorySegment::~MemorySegment() {
    reset();
}

void MemorySegment::become_owner(const std::string &norm, bool persistent) {
    set_name(norm);
    owner_ = true;
    persistent_ = persistent;
    renew_in_fork_children(fd_.get());
    renewed_ = true;
}

void MemorySegment::set_name(const std::string &norm) {
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0)
        throw_errno("fstat");
    name_ = norm;
    dev_ = st.st_dev;
    ino_ = st.st_ino;
    // A named file can be shrunk by anyone who may write it: never let that SIGBUS us.
    if (data_ && !truncated_) {
        truncated_ = std::make_unique<std::atomic<bool>>(false);
        guard_mapping(data_, size_, truncated_.get());
    }
}

void MemorySegment::check_intact(const char *what) const {
    if (truncated())
        throw CorruptSegment(std::string(what) + " '" + name_ +
                             "' was truncated by another process (its file is shorter than its "
                             "mapping)");
}

std::size_t MemorySegment::file_size() const {
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0)
        throw_errno("fstat");
    return static_cast<std::size_t>(st.st_size);
}

void MemorySegment::reset() noexcept {
    if (data_ && truncated_)
        unguard_mapping(data_);
    if (data_)
        ::munmap(data_, size_);
    data_ = nullptr;
    if (owner() && !persistent_ && !name_.empty()) {
        // Remove the name only if it still refers to our file (never someone else's).
        std::string path = shm_path(name_);
        struct stat st {};
        if (::stat(path.c_str(), &st) == 0 && st.st_ino == ino_ && st.st_dev == dev_)
            ::unlink(path.c_str());
    }
    owner_ = false;
    if (renewed_)
        forget_in_fork_children(fd_.get());
    renewed_ = false;
    fd_.reset();
    size_ = 0;
}

UniqueFd MemorySegment::release_fd() noexcept {
    if (data_ && truncated_)
        unguard_mapping(data_);
    if (data_)
        ::munmap(data_, size_);
    data_ = nullptr;
    size_ = 0;
    owner_ = false;
    if (renewed_)
        forget_in_fork_children(fd_.get());
    renewed_ = false;
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
    return map_fd(std::move(fd), size, true);
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
    return NamedSegment(name)
        .kind(kind, layout_version)
        .size(size)
        .mode(mode)
        .persistent(persistent)
        .initializer(init)
        .create();
}

MemorySegment MemorySegment::attach_named(std::string_view name, SegmentKind kind,
                                          std::uint32_t layout_version, std::size_t min_size,
                                          const TrustPolicy &trust) {
    return NamedSegment(name).kind(kind, layout_version).min_size(min_size).trust(trust).attach();
}

} // namespace shmipc
