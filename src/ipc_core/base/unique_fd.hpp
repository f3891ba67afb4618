// Move-only owner of one file descriptor.
#pragma once

#include <utility>

namespace shmipc {

class UniqueFd {
  public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd &&other) noexcept : fd_(other.release()) {}
    UniqueFd &operator=(UniqueFd &&other) noexcept {
        if (this != &other)
            reset(other.release());
        return *this;
    }
    UniqueFd(const UniqueFd &) = delete;
    UniqueFd &operator=(const UniqueFd &) = delete;
    ~UniqueFd() { reset(); }

    // The object still owns the descriptor.
    [[nodiscard]] int get() const noexcept { return fd_; }
    // The caller owns the descriptor from now on.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept;
    [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
    explicit operator bool() const noexcept { return valid(); }

    // dup with O_CLOEXEC; throws OsError.
    [[nodiscard]] UniqueFd dup() const;

  private:
    int fd_ = -1;
};

} // namespace shmipc
