// Names and force-destroy.
#include "bindings.hpp"

#include <pybind11/stl.h>

#include "ipc_core/shm/memory_segment.hpp"
#include "ipc_core/shm/shm_name.hpp"
#include "ipc_core/stream/inventory.hpp"

namespace shmipc::bindings {

void bind_segment(py::module_ &m) {
    m.def("normalize_name", &normalize_shm_name, py::arg("name"));
    m.def("unlink", &unlink_named, py::arg("name"));
    m.def("page_size", &page_size);
    m.def(
        "list_objects",
        [](const std::string &dir) {
            py::list out;
            for (const auto &o : list_objects(dir)) {
                py::dict d;
                d["name"] = o.name;
                d["kind"] = o.kind;
                d["size"] = o.size;
                d["mode"] = o.mode;
                d["uid"] = o.uid;
                d["owner_pid"] = o.owner_pid;
                d["persistent"] = o.persistent;
                d["owner_alive"] = o.owner_alive;
                d["stale"] = o.stale;
                d["created_unix_ns"] = o.created_unix_ns;
                out.append(d);
            }
            return out;
        },
        py::arg("dir") = "/dev/shm");
    m.def("remove_stale_objects", &remove_stale_objects, py::arg("dir") = "/dev/shm");
}

} // namespace shmipc::bindings
