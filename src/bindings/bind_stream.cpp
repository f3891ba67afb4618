// Shared-memory streams: the fd-level core (create/open/stale/xattrs) of shmipc.open_stream; the
// io objects are built in python/shmipc/_stream.py.
#include "bindings.hpp"
#include "ipc_core/base/errors.hpp"

#include "ipc_core/stream/shm_stream.hpp"

namespace shmipc::bindings {

void bind_stream(py::module_ &m) {
    m.def(
        "stream_create",
        [](const std::string &name, std::uint32_t mode, bool persistent, bool append) {
            return create_stream(name, static_cast<mode_t>(mode), persistent, append).release();
        },
        py::arg("name"), py::arg("mode"), py::arg("persistent"), py::arg("append"),
        "Creates a stream exclusively; returns its fd (the caller owns it).");
    m.def(
        "stream_open",
        [](const std::string &name, int access, bool truncate, bool append,
           std::uint32_t trust_uid) {
            if (access < 0 || access > 2)
                throw InvalidArgument("bad stream access");
            GuestStream g = open_stream(name, static_cast<StreamAccess>(access), truncate, append,
                                        TrustPolicy{static_cast<uid_t>(trust_uid)});
            bool w = g.writable;
            return py::make_tuple(g.fd.release(), w);
        },
        py::arg("name"), py::arg("access"), py::arg("truncate"), py::arg("append"),
        py::arg("trust_uid") = TrustPolicy::kOwnUser,
        "Opens an existing stream as a guest; returns (fd, writable) (the caller owns the fd).");
    m.def("stream_release_name", &release_stream_name, py::arg("name"), py::arg("owner_fd"));
    m.def(
        "stream_info",
        [](const std::string &name) {
            StreamInfo i = stream_info(name);
            py::dict d;
            d["is_stream"] = i.is_stream;
            d["persistent"] = i.persistent;
            d["owner_alive"] = i.owner_alive;
            d["size"] = i.size;
            return d;
        },
        py::arg("name"));
    m.def(
        "chmod",
        [](const std::string &name, std::uint32_t mode) {
            chmod_named(name, static_cast<mode_t>(mode));
        },
        py::arg("name"), py::arg("mode"));
    m.def(
        "chgrp",
        [](const std::string &name, std::uint32_t gid) {
            chgrp_named(name, static_cast<gid_t>(gid));
        },
        py::arg("name"), py::arg("gid"));
}

} // namespace shmipc::bindings
