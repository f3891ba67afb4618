#include "ipc_core/base/unique_fd.hpp"

#include "ipc_core/base/errors.hpp"

#include <cerrno>
#include <fcntl.h>
#include <system_error>
#include <unistd.h>

namespace shmipc {

void UniqueFd::reset(int fd) noexcept {
    if (fd_ >= 0 && fd_ != fd) {
        // close() must not be retried on EINTR on Linux: the fd is gone either way.
        ::close(fd_);
    }
    fd_ = fd;
}

UniqueFd UniqueFd::dup() const {
    int nfd = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
    if (nfd < 0)
        throw_errno("fcntl(F_DUPFD_CLOEXEC)");
    return UniqueFd(nfd);
}

} // namespace shmipc
