// Streams (API.md section 3): a /dev/shm file read and written through a real fd, the same
// object as Python's shmipc.open_stream(name, "w+b", owner=True) (owner) or
// shmipc.open_stream(name, "rb") (guest).
//
//   auto log = shmipc::Stream::create("log");      // owner: its close removes the name
//   log.write("line\n");
//   auto g = shmipc::Stream::open("log");          // a guest, read-only
//   std::string all = g.read_all();
#pragma once

#include "shmipc/config.hpp"
#include "shmipc/errors.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <sys/types.h>

namespace shmipc {
inline namespace v1 {

class Stream {
  public:
    enum class Mode { Read, ReadWrite };
    // Creates the stream as its owner (OsError EEXIST if a live one exists); readable and
    // writable. Unless persistent, close() (or the process's death) removes the name.
    static Stream create(std::string_view name, mode_t mode = 0600, bool persistent = false);
    // Opens an existing stream as a guest (OsError ENOENT if absent); never removes the name.
    static Stream open(std::string_view name, Mode mode = Mode::Read);
    Stream(Stream &&) noexcept;
    Stream &operator=(Stream &&) noexcept;
    ~Stream();

    // At the current position (write: all of it, or OsError).
    std::size_t write(std::span<const std::byte> bytes);
    std::size_t write(std::string_view bytes);
    [[nodiscard]] std::size_t read(std::span<std::byte> out); // 0 at end of file
    [[nodiscard]] std::string read_all();                     // from the position to the end
    void seek(std::int64_t offset);                           // from the start
    void truncate(std::uint64_t size);
    [[nodiscard]] std::uint64_t size() const;
    [[nodiscard]] int fileno() const;
    [[nodiscard]] bool owner() const noexcept;
    [[nodiscard]] const std::string &name() const;
    void close() noexcept;
    [[nodiscard]] bool closed() const noexcept;

    struct Impl;

  private:
    Stream() = default;
    std::unique_ptr<Impl> impl_;
    friend struct ApiAccess;
};

} // namespace v1
} // namespace shmipc
