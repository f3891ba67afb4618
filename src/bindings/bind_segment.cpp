// Names and force-destroy.
#include "bindings.hpp"

#include "ipc_core/memory_segment.hpp"
#include "ipc_core/shm_name.hpp"

namespace shmipc::bindings {

void bind_segment(py::module_& m) {
    m.def("normalize_name", &normalize_shm_name, py::arg("name"));
    m.def("unlink", &unlink_named, py::arg("name"));
    m.def("page_size", &page_size);
}

} // namespace shmipc::bindings
