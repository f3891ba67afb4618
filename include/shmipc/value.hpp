// Shared values with change notification (API.md section 4): the latest bytes, text or array
// under a name, with a version. The same object as Python's shmipc.SharedValue: a C++
// write_text("hi") reads as 'hi' in Python, write_array(...) as an ndarray of that dtype and
// shape, and whatever Python writes (str, bytes, ndarray) reads back here with its kind.
//
//   auto w = shmipc::SharedValue::create("pose", {.size = 4096});
//   w.write_array(std::span<const double>(xyz), {3});
//   auto r = shmipc::SharedValue::attach("pose");
//   r.wait(0, std::chrono::seconds(1));
//   shmipc::Value v = r.read();                  // v.kind == Value::Kind::Array
#pragma once

#include "shmipc/array.hpp"
#include "shmipc/config.hpp"
#include "shmipc/errors.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace shmipc {
inline namespace v1 {

struct ValueOptions {
    std::size_t size = 65535; // largest value in bytes
    mode_t mode = 0600;
    bool persistent = false;
};

// A consistent copy of a value.
struct Value {
    enum class Kind { None, Bytes, Text, Array }; // None: never written
    Kind kind = Kind::None;
    std::uint64_t version = 0;
    std::vector<std::byte> data; // the bytes, UTF-8 text or array elements (C order)
    ArrayInfo array;             // for Kind::Array

    [[nodiscard]] std::string_view text() const {
        return {reinterpret_cast<const char *>(data.data()), data.size()};
    }
    template <class T> [[nodiscard]] std::span<const T> as() const {
        return array_cast<T>(data, array);
    }
};

class SharedValue {
  public:
    static SharedValue create(std::string_view name, const ValueOptions &options = {});
    static SharedValue attach(std::string_view name);
    SharedValue(SharedValue &&) noexcept;
    SharedValue &operator=(SharedValue &&) noexcept;
    ~SharedValue();

    // Each returns the version of this write; a value larger than size() is InvalidArgument
    // and leaves the old value intact. Python reads bytes / str / ndarray.
    std::uint64_t write_bytes(std::span<const std::byte> bytes);
    std::uint64_t write_text(std::string_view utf8);
    std::uint64_t write_array(std::span<const std::byte> bytes, const ArrayInfo &info);
    template <class T>
    std::uint64_t write_array(std::span<const T> data, std::vector<std::int64_t> shape) {
        return write_array(std::as_bytes(data), array_info<T>(std::move(shape)));
    }

    // A consistent copy of the latest value, never torn.
    [[nodiscard]] Value read() const;
    [[nodiscard]] std::uint64_t version() const;
    // Waits until version() > since: false if the timeout passed first.
    [[nodiscard]] bool wait(std::uint64_t since, WaitFor timeout = std::nullopt) const;

    [[nodiscard]] std::size_t size() const;
    [[nodiscard]] const std::string &name() const;
    void close() noexcept;
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    SharedValue() = default;
    std::unique_ptr<Impl> impl_;
    friend struct ApiAccess;
};

} // namespace v1
} // namespace shmipc
