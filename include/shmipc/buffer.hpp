// Buffers and fd passing (API.md section 1): a memfd-backed Buffer moved to another process
// over a Unix socket; the same wire format as shmipc.send / shmipc.recv / send_array /
// recv_array, so either end may be Python.
//
//   shmipc::Buffer buf(1 << 20);                       // zero-filled, writable
//   std::ranges::fill(buf.writable_bytes(), std::byte{7});
//   shmipc::send(sock, buf, shmipc::Meta::json(R"({"frame": 1})"));  // buf is read-only now
//   shmipc::Buffer got = shmipc::recv(sock, std::chrono::seconds(5)); // writable for us
#pragma once

#include "shmipc/array.hpp"
#include "shmipc/config.hpp"
#include "shmipc/errors.hpp"

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace shmipc {
inline namespace v1 {

// Small user metadata that travels with a buffer (<= 64 KiB): raw bytes (Python sees bytes) or
// the text of a JSON object (Python sees a dict).
struct Meta {
    enum class Kind { None, Bytes, Json };
    Kind kind = Kind::None;
    std::string data; // the bytes, or the JSON text

    static Meta bytes(std::span<const std::byte> b) {
        return {Kind::Bytes, std::string(reinterpret_cast<const char *>(b.data()), b.size())};
    }
    static Meta bytes(std::string_view b) { return {Kind::Bytes, std::string(b)}; }
    // `json_object` must be the text of a JSON object ("{...}"); InvalidArgument otherwise.
    static Meta json(std::string_view json_object);
    [[nodiscard]] bool empty() const noexcept { return kind == Kind::None; }
};

// A memfd-backed buffer (move-only; RAII: the destructor closes it). Sending it moves the
// bytes: the sender's mapping becomes read-only, the receiver's is writable.
class Buffer {
  public:
    explicit Buffer(std::size_t nbytes); // zero-filled, writable
    static Buffer from_bytes(std::span<const std::byte> bytes);
    Buffer(Buffer &&) noexcept;
    Buffer &operator=(Buffer &&) noexcept;
    ~Buffer();

    // The bytes (Closed after close()).
    [[nodiscard]] std::span<const std::byte> bytes() const;
    // For writing: BufferBusy if the buffer was sent (moved) or sealed.
    [[nodiscard]] std::span<std::byte> writable_bytes();
    [[nodiscard]] std::size_t nbytes() const;
    [[nodiscard]] bool readonly() const;
    [[nodiscard]] bool sealed() const;
    [[nodiscard]] int fileno() const;
    // What came with a received buffer (Kind::None for one created here).
    [[nodiscard]] const Meta &meta() const;
    // Immutable from now on, for everyone (F_SEAL_WRITE); may then be sent any number of times.
    void seal();
    void close() noexcept;
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    explicit Buffer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
    friend struct ApiAccess;
};

// Moves `buf` to the process at the other end of the AF_UNIX socket `sock` (shmipc.recv()
// there gets it). Blocks while the socket is full.
void send(int sock, Buffer &buf, const Meta &meta = {});
// Receives one Buffer sent by shmipc.send (Python) or send() (C++). EndOfStream if the peer
// closed; CorruptSegment for garbage or for an array message (use recv_array).
[[nodiscard]] Buffer recv(int sock, WaitFor timeout = std::nullopt);

// Sends `buf` as an array (its first info.nbytes() bytes): shmipc.recv_array() in Python gets
// an ndarray of that dtype and shape, zero copy.
void send_array(int sock, Buffer &buf, const ArrayInfo &info, const Meta &meta = {});

struct ArrayBuffer {
    Buffer buffer;
    ArrayInfo info;
    std::size_t offset = 0; // of element 0 in the buffer
    // The array's bytes (info.nbytes() from offset).
    [[nodiscard]] std::span<const std::byte> bytes() const {
        return buffer.bytes().subspan(offset, info.nbytes());
    }
    template <class T> [[nodiscard]] std::span<const T> as() const {
        return array_cast<T>(bytes(), info);
    }
};
// Receives an array sent by shmipc.send_array (Python) or send_array() (C++).
[[nodiscard]] ArrayBuffer recv_array(int sock, WaitFor timeout = std::nullopt);

} // namespace v1
} // namespace shmipc
