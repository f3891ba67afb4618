// One bind_<concept> function per concept; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace shmipc::bindings {
namespace py = pybind11;

void bind_errors(py::module_& m);
void bind_buffer(py::module_& m);
void bind_segment(py::module_& m);
void bind_heap(py::module_& m);
void bind_dict(py::module_& m);
void bind_stream(py::module_& m);
void bind_value(py::module_& m);
void bind_channel(py::module_& m);
void bind_queue(py::module_& m);

// Blocking calls release the GIL with this guard; the engine calls back into the interrupt
// hook (which takes the GIL for PyErr_CheckSignals) between wait slices.
using release_gil = py::call_guard<py::gil_scoped_release>;

} // namespace shmipc::bindings
