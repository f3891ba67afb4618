// shmipc::Buffer, send/recv and send_array/recv_array over the engine's buffer/ and fd_passing
// (the same calls the Python binding makes; see src/bindings/bind_buffer.cpp).
#include "internal.hpp"

#include "ipc_core/shm/publish.hpp"
#include "ipc_core/shm/shm_name.hpp"

#include <cstring>

namespace shmipc {
inline namespace v1 {

namespace {
engine::Buffer &core_of(const std::unique_ptr<Buffer::Impl> &i) {
    if (!i || !i->buf || i->buf->closed())
        throw Closed("Buffer is closed");
    return *i->buf;
}

void send_impl(int sock, Buffer &buf, const std::string &meta, const std::string &desc) {
    engine::Buffer &b = core_of(ApiAccess::impl(buf));
    int fd = b.prepare_send(0);
    send_fd_message(sock, fd, b.nbytes(), meta, desc);
    b.mark_sent();
}

std::unique_ptr<Buffer::Impl> recv_impl(int sock, WaitFor timeout, std::string &desc) {
    FdMessage msg = recv_fd_message(sock, to_deadline(timeout));
    auto impl = std::make_unique<Buffer::Impl>();
    impl->buf =
        engine::Buffer::adopt(std::move(msg.fd), msg.nbytes, msg.file_size, msg.write_sealed);
    impl->meta = codec::decode_buffer_meta(msg.meta);
    desc = std::move(msg.desc);
    return impl;
}
} // namespace

Buffer::Buffer(std::size_t nbytes) : impl_(std::make_unique<Impl>()) {
    impl_->buf = engine::Buffer::create(nbytes, true);
}
Buffer::Buffer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Buffer::Buffer(Buffer &&) noexcept = default;
Buffer &Buffer::operator=(Buffer &&) noexcept = default;
Buffer::~Buffer() {
    close();
}

Buffer Buffer::from_bytes(std::span<const std::byte> bytes) {
    auto impl = std::make_unique<Impl>();
    impl->buf = engine::Buffer::create(bytes.size(), false);
    if (!bytes.empty())
        std::memcpy(impl->buf->data(), bytes.data(), bytes.size());
    return Buffer(std::move(impl));
}

std::span<const std::byte> Buffer::bytes() const {
    engine::Buffer &b = core_of(impl_);
    return {b.data(), b.nbytes()};
}
std::span<std::byte> Buffer::writable_bytes() {
    engine::Buffer &b = core_of(impl_);
    if (b.readonly())
        throw BufferBusy(b.sealed() ? "Buffer is sealed: it is immutable"
                                    : "Buffer was sent: its bytes belong to the receiver");
    return {b.data(), b.nbytes()};
}
std::size_t Buffer::nbytes() const {
    return core_of(impl_).nbytes();
}
bool Buffer::readonly() const {
    return core_of(impl_).readonly();
}
bool Buffer::sealed() const {
    return core_of(impl_).sealed();
}
int Buffer::fileno() const {
    return core_of(impl_).fileno();
}
const Meta &Buffer::meta() const {
    core_of(impl_);
    return impl_->meta;
}
void Buffer::seal() {
    core_of(impl_).seal();
}
void Buffer::close() noexcept {
    if (impl_ && impl_->buf) {
        impl_->buf->close();
        impl_->buf.reset();
    }
}
bool Buffer::closed() const noexcept {
    return !impl_ || !impl_->buf;
}

void send(int sock, Buffer &buf, const Meta &meta) {
    send_impl(sock, buf, codec::encode_buffer_meta(meta), {});
}

Buffer recv(int sock, WaitFor timeout) {
    std::string desc;
    Buffer b = ApiAccess::make_buffer(recv_impl(sock, timeout, desc));
    if (!desc.empty())
        throw CorruptSegment("received an array message; use recv_array()");
    return b;
}

void send_array(int sock, Buffer &buf, const ArrayInfo &info, const Meta &meta) {
    codec::check_array(info, buf.nbytes(), "send_array");
    send_impl(sock, buf, codec::encode_buffer_meta(meta), codec::encode_array(info, 0));
}

ArrayBuffer recv_array(int sock, WaitFor timeout) {
    std::string desc;
    Buffer b = ApiAccess::make_buffer(recv_impl(sock, timeout, desc));
    if (desc.empty())
        throw CorruptSegment("received a plain buffer message; use recv()");
    std::uint64_t offset = 0;
    ArrayInfo info = codec::decode_array(desc, offset, "array descriptor");
    std::size_t need = info.nbytes();
    if (offset > b.nbytes() || need > b.nbytes() - offset)
        throw CorruptSegment("array descriptor: " + std::to_string(need) + " bytes at offset " +
                             std::to_string(offset) + " in a buffer of " +
                             std::to_string(b.nbytes()));
    return ArrayBuffer{std::move(b), std::move(info), static_cast<std::size_t>(offset)};
}

std::string normalize_name(std::string_view name) {
    return normalize_shm_name(name);
}
bool unlink(std::string_view name) {
    return unlink_named(name);
}

} // namespace v1
} // namespace shmipc
