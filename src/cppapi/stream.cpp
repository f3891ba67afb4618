// shmipc::Stream over the engine's stream/ (the calls python/shmipc/_stream.py makes through
// src/bindings/bind_stream.cpp).
#include "internal.hpp"

#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/stream/shm_stream.hpp"

#include <cerrno>
#include <sys/stat.h>
#include <unistd.h>

namespace shmipc {
inline namespace v1 {

namespace {
Stream::Impl &stream_of(const std::unique_ptr<Stream::Impl> &i) {
    if (!i || !i->fd)
        throw Closed("Stream is closed");
    return *i;
}
} // namespace

Stream::Impl::~Impl() {
    if (fd && remove_on_close && pid == ::getpid())
        release_stream_name(name, fd.get());
}

Stream Stream::create(std::string_view name, mode_t mode, bool persistent) {
    Stream s;
    s.impl_ = std::make_unique<Impl>();
    s.impl_->name = normalize_shm_name(name);
    s.impl_->fd = create_stream(s.impl_->name, mode, persistent, false);
    s.impl_->owner = true;
    s.impl_->remove_on_close = !persistent;
    s.impl_->pid = ::getpid();
    return s;
}
Stream Stream::open(std::string_view name, Mode mode) {
    Stream s;
    s.impl_ = std::make_unique<Impl>();
    s.impl_->name = normalize_shm_name(name);
    GuestStream g = open_stream(
        s.impl_->name, mode == Mode::Read ? StreamAccess::ReadOnly : StreamAccess::ReadWrite, false,
        false);
    s.impl_->fd = std::move(g.fd);
    return s;
}
Stream::Stream(Stream &&) noexcept = default;
Stream &Stream::operator=(Stream &&) noexcept = default;
Stream::~Stream() = default;

std::size_t Stream::write(std::span<const std::byte> bytes) {
    int fd = stream_of(impl_).fd.get();
    std::size_t done = 0;
    while (done < bytes.size()) {
        ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            throw_errno("write");
        }
        done += static_cast<std::size_t>(n);
    }
    return done;
}
std::size_t Stream::write(std::string_view bytes) {
    return write(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}
std::size_t Stream::read(std::span<std::byte> out) {
    int fd = stream_of(impl_).fd.get();
    for (;;) {
        ssize_t n = ::read(fd, out.data(), out.size());
        if (n >= 0)
            return static_cast<std::size_t>(n);
        if (errno != EINTR)
            throw_errno("read");
    }
}
std::string Stream::read_all() {
    std::string out;
    std::byte chunk[65536];
    for (;;) {
        std::size_t n = read(chunk);
        if (n == 0)
            return out;
        out.append(reinterpret_cast<const char *>(chunk), n);
    }
}
void Stream::seek(std::int64_t offset) {
    if (::lseek(stream_of(impl_).fd.get(), static_cast<off_t>(offset), SEEK_SET) < 0)
        throw_errno("lseek");
}
void Stream::truncate(std::uint64_t size) {
    if (::ftruncate(stream_of(impl_).fd.get(), static_cast<off_t>(size)) != 0)
        throw_errno("ftruncate");
}
std::uint64_t Stream::size() const {
    struct stat st {};
    if (::fstat(stream_of(impl_).fd.get(), &st) != 0)
        throw_errno("fstat");
    return static_cast<std::uint64_t>(st.st_size);
}
int Stream::fileno() const {
    return stream_of(impl_).fd.get();
}
bool Stream::owner() const noexcept {
    return impl_ && impl_->owner;
}
const std::string &Stream::name() const {
    return stream_of(impl_).name;
}
void Stream::close() noexcept {
    impl_.reset();
}
bool Stream::closed() const noexcept {
    return !impl_;
}

} // namespace v1
} // namespace shmipc
