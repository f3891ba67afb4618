#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/base/errors.hpp"

#include <stdexcept>

namespace shmipc {

std::string normalize_shm_name(std::string_view name) {
    std::string_view body = name;
    if (!body.empty() && body.front() == '/')
        body.remove_prefix(1);
    if (body.empty() || body.size() > kMaxNameLength)
        throw InvalidArgument("invalid shared-memory name '" + std::string(name) +
                              "': must be 1..200 characters after an optional '/'");
    if (body.find('/') != std::string_view::npos || body.find('\0') != std::string_view::npos)
        throw InvalidArgument("invalid shared-memory name '" + std::string(name) +
                              "': no '/' (after the first) or NUL allowed");
    if (body == "." || body == "..")
        throw InvalidArgument("invalid shared-memory name '" + std::string(name) + "'");
    return "/" + std::string(body);
}

std::string shm_path(std::string_view normalized) {
    return "/dev/shm" + std::string(normalized);
}

} // namespace shmipc
