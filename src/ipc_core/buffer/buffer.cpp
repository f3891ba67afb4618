#include "ipc_core/buffer/buffer.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/buffer/fd_passing.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <mutex>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shmipc {

namespace {

struct PoolEntry {
    MemorySegment seg;
    dev_t dev;
    ino_t ino;
    bool reusable; // this process owned the bytes when it let go of them
};

class Pool {
  public:
    static Pool &instance() {
        static Pool *p = [] {
            auto *pool = new Pool(); // never destroyed: buffers may outlive static destruction
            on_fork_child([] { Pool::instance().forget_after_fork(); });
            set_fd_pressure_hook([] { Pool::instance().clear(); });
            return pool;
        }();
        return *p;
    }

    // A reusable mapping of exactly `size` bytes, or an empty segment.
    MemorySegment take_for_new(std::size_t size) {
        std::lock_guard lk(mu_);
        for (auto it = entries_.begin(); it != entries_.end(); ++it) {
            if (it->reusable && it->seg.size() == size) {
                MemorySegment s = std::move(it->seg);
                bytes_ -= size;
                entries_.erase(it);
                ++hits_;
                return s;
            }
        }
        ++misses_;
        return {};
    }

    MemorySegment take_by_file(dev_t dev, ino_t ino, std::size_t size) {
        std::lock_guard lk(mu_);
        for (auto it = entries_.begin(); it != entries_.end(); ++it) {
            if (it->dev == dev && it->ino == ino && it->seg.size() == size) {
                MemorySegment s = std::move(it->seg);
                bytes_ -= size;
                entries_.erase(it);
                ++hits_;
                return s;
            }
        }
        return {};
    }

    void put(MemorySegment seg, bool reusable) noexcept {
        std::size_t size = seg.size();
        struct stat st {};
        if (size == 0 || ::fstat(seg.fd(), &st) != 0)
            return;                    // seg unmapped by its destructor
        std::deque<PoolEntry> evicted; // unmapped outside the lock
        {
            std::lock_guard lk(mu_);
            if (size > limit_)
                return;
            // One mapping per file: a second one (a sender that reuses its memfd for many
            // messages) would keep the file mapped writable twice, and seal() would refuse.
            for (const auto &e : entries_)
                if (e.dev == st.st_dev && e.ino == st.st_ino)
                    return;
            entries_.push_front(PoolEntry{std::move(seg), st.st_dev, st.st_ino, reusable});
            bytes_ += size;
            // The fd limit, read again every kLimitRecheck puts (getrlimit is a syscall, a
            // tenth of a buffer's create + close): a limit lowered meanwhile is seen within
            // that many puts, and the pool never holds more than kMaxEntries fds anyway.
            if (puts_++ % kLimitRecheck == 0)
                max_entries_ = max_idle_fds();
            const std::size_t max_entries = max_entries_;
            while (bytes_ > limit_ || entries_.size() > max_entries) {
                bytes_ -= entries_.back().seg.size();
                evicted.push_back(std::move(entries_.back()));
                entries_.pop_back();
            }
        }
    }

    void set_limit(std::size_t bytes) {
        std::deque<PoolEntry> evicted;
        std::lock_guard lk(mu_);
        limit_ = bytes;
        while (bytes_ > limit_ && !entries_.empty()) {
            bytes_ -= entries_.back().seg.size();
            evicted.push_back(std::move(entries_.back()));
            entries_.pop_back();
        }
    }

    PoolStats stats() {
        std::lock_guard lk(mu_);
        return {entries_.size(), bytes_, limit_, hits_, misses_};
    }

    void clear() {
        std::deque<PoolEntry> gone;
        std::lock_guard lk(mu_);
        gone.swap(entries_);
        bytes_ = 0;
    }

  private:
    // A forked child must not reuse the parent's idle buffers (both would think they own
    // them). Mutex state is unknown after fork, so rebuild it rather than lock it.
    void forget_after_fork() noexcept {
        new (&mu_) std::mutex();
        entries_.clear();
        bytes_ = 0;
        puts_ = 0; // the child reads the limit on its first put
    }

    static constexpr std::size_t kMaxEntries = 64;
    static constexpr std::size_t kLimitRecheck = 64;
    // Every idle entry keeps an fd open: never more than a sixteenth of the process's fd limit,
    // so the pool alone cannot push the user's own open() into EMFILE.
    static std::size_t max_idle_fds() noexcept {
        struct rlimit rl {};
        if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
            return kMaxEntries;
        return std::min<std::size_t>(kMaxEntries, static_cast<std::size_t>(rl.rlim_cur / 16));
    }
    std::mutex mu_;
    std::deque<PoolEntry> entries_;
    std::size_t bytes_ = 0;
    std::size_t limit_ = std::size_t{1} << 30; // 1 GiB of idle mappings by default
    std::size_t hits_ = 0;
    std::size_t misses_ = 0;
    std::size_t puts_ = 0;                  // put() calls, for the limit's re-reads
    std::size_t max_entries_ = kMaxEntries; // max_idle_fds() as last read
};

} // namespace

void set_pool_limit(std::size_t bytes) {
    Pool::instance().set_limit(bytes);
}
PoolStats pool_stats() {
    return Pool::instance().stats();
}
void clear_pool() {
    Pool::instance().clear();
}

std::unique_ptr<Buffer> Buffer::create(std::size_t nbytes, bool zero) {
    std::unique_ptr<Buffer> b(new Buffer());
    std::size_t mapped = round_up(nbytes, page_size());
    MemorySegment seg = mapped ? Pool::instance().take_for_new(mapped) : MemorySegment{};
    if (seg.data()) {
        if (!seg.writable())
            seg.protect(true);
        if (zero)
            std::memset(seg.data(), 0, nbytes);
    } else {
        try {
            seg = MemorySegment::anonymous(mapped, "shmipc-buffer");
        } catch (const OsError &e) {
            if (e.err() != EMFILE && e.err() != ENFILE)
                throw;
            // Out of fds: our idle buffers hold some; give them back and try once more.
            Pool::instance().clear();
            seg = MemorySegment::anonymous(mapped, "shmipc-buffer");
        }
    }
    b->seg_ = std::move(seg);
    b->nbytes_ = nbytes;
    b->writable_ = true;
    return b;
}

std::unique_ptr<Buffer> Buffer::adopt(UniqueFd fd, std::size_t nbytes, std::size_t file_size,
                                      bool write_sealed) {
    std::unique_ptr<Buffer> b(new Buffer());
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    // Map what was announced (a sender's file may be far larger, even sparse: mapping all of it
    // could exhaust the address space), never more than the file.
    const std::size_t mapped =
        std::min(round_up(std::max<std::size_t>(nbytes, 1), page_size()), file_size);
    MemorySegment seg = Pool::instance().take_by_file(st.st_dev, st.st_ino, mapped);
    if (seg.data()) {
        // Our old mapping of the same file: keep it (warm pages), drop the duplicate fd.
        if (seg.writable() != !write_sealed)
            seg.protect(!write_sealed);
    } else {
        seg = MemorySegment::map_fd(std::move(fd), mapped, !write_sealed);
    }
    b->seg_ = std::move(seg);
    b->nbytes_ = nbytes;
    b->sealed_ = write_sealed;
    b->writable_ = !write_sealed;
    b->shared_ = true; // the process that handed it over still uses these bytes
    return b;
}

std::unique_ptr<Buffer> Buffer::share(UniqueFd fd, std::size_t nbytes) {
    int seals = ::fcntl(fd.get(), F_GET_SEALS);
    bool write_sealed = seals >= 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
        throw_errno("fstat");
    if (static_cast<std::size_t>(st.st_size) < nbytes)
        throw CorruptSegment("shared fd too small");
    std::unique_ptr<Buffer> b(new Buffer());
    const std::size_t mapped = std::min(round_up(std::max<std::size_t>(nbytes, 1), page_size()),
                                        static_cast<std::size_t>(st.st_size));
    b->seg_ = MemorySegment::map_fd(std::move(fd), mapped, !write_sealed);
    b->nbytes_ = nbytes;
    b->sealed_ = write_sealed;
    b->writable_ = !write_sealed;
    b->shared_ = true; // the process that handed it over still uses these bytes
    return b;
}

Buffer::~Buffer() {
    give_back();
}

void Buffer::give_back() noexcept {
    if (released_)
        return;
    released_ = true;
    // Sealed files can never be written again: no use for new buffers.
    if (!sealed_ && seg_.data())
        Pool::instance().put(std::move(seg_), !moved_ && !shared_);
    seg_.reset();
}

std::byte *Buffer::data() const {
    if (released_)
        throw Closed("Buffer is closed");
    return seg_.data();
}

int Buffer::fileno() const {
    if (closed_)
        throw Closed("Buffer is closed");
    return seg_.fd();
}

void Buffer::acquire_export(bool writable) {
    if (closed_)
        throw Closed("Buffer is closed");
    if (writable && readonly())
        throw BufferBusy(moved_ ? "buffer was sent (moved): it is read-only in this process"
                                : "buffer is read-only");
    ++exports_;
    if (writable)
        ++writable_exports_;
}

void Buffer::downgrade_export() noexcept {
    if (writable_exports_)
        --writable_exports_;
}

void Buffer::release_export(bool writable) noexcept {
    if (exports_)
        --exports_;
    if (writable && writable_exports_)
        --writable_exports_;
    if (closed_ && exports_ == 0)
        give_back();
}

void Buffer::close() noexcept {
    closed_ = true;
    if (exports_ == 0)
        give_back();
}

int Buffer::prepare_send(std::size_t allowed_writable_exports) const {
    if (closed_)
        throw Closed("Buffer is closed");
    if (moved_ && !sealed_)
        throw BufferBusy("buffer was already sent (moved); only a sealed buffer can be sent again");
    if (writable_exports_ > allowed_writable_exports)
        throw BufferBusy(
            "cannot send: " + std::to_string(writable_exports_ - allowed_writable_exports) +
            " writable view(s) of this buffer still exist in this process "
            "(release them, or send a sealed buffer)");
    return seg_.fd();
}

void Buffer::mark_sent() {
    if (sealed_)
        return;
    moved_ = true;
    writable_ = false;
    // The MMU enforces it too when that is cheap and no writable view is left that could
    // still write (a write through one would be a SIGSEGV instead of a Python error).
    if (writable_exports_ == 0 && seg_.size() <= kHardwareProtectLimit)
        seg_.protect(false);
}

void Buffer::seal() {
    if (closed_)
        throw Closed("Buffer is closed");
    if (sealed_)
        return;
    if (writable_exports_)
        throw BufferBusy("cannot seal: writable views of this buffer still exist");
    if (seg_.data()) {
        // F_SEAL_WRITE needs every shared writable mapping gone, including ours: remap the same
        // address range from a read-only descriptor (read-only views stay valid).
        std::string path = "/proc/self/fd/" + std::to_string(seg_.fd());
        UniqueFd ro(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!ro)
            throw_errno("open(/proc/self/fd)");
        void *p = ::mmap(seg_.data(), seg_.size(), PROT_READ, MAP_SHARED | MAP_FIXED, ro.get(), 0);
        if (p == MAP_FAILED)
            throw_errno("mmap(MAP_FIXED)");
        seg_.protect(false);
    }
    writable_ = false; // from here on, even if the seal below is refused
    if (::fcntl(seg_.fd(), F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) !=
        0) {
        if (errno == EBUSY) {
            // Someone else still maps it writable: at least forbid any new writable mapping.
            if (::fcntl(seg_.fd(), F_ADD_SEALS, F_SEAL_FUTURE_WRITE) != 0)
                throw_errno("F_ADD_SEALS");
            throw BufferBusy("cannot seal fully: another process still maps this buffer writable "
                             "(new writable mappings are now refused)");
        }
        throw_errno("F_ADD_SEALS");
    }
    sealed_ = true;
}

} // namespace shmipc
