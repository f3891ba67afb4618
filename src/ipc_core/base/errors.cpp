#include "ipc_core/base/errors.hpp"

#include <cerrno>

namespace shmipc {

void throw_errno(int err, const std::string &call) {
    throw OsError(err, call);
}

void throw_errno(const char *call) {
    throw_errno(errno, call);
}

} // namespace shmipc
