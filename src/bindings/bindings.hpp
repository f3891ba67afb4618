// One bind_<concept> function per concept; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace shmipc::bindings {
namespace py = pybind11;

void bind_errors(py::module_ &m);
void bind_buffer(py::module_ &m);
void bind_segment(py::module_ &m);
void bind_heap(py::module_ &m);
void bind_dict(py::module_ &m);
void bind_stream(py::module_ &m);
void bind_value(py::module_ &m);
void bind_channel(py::module_ &m);
void bind_topic(py::module_ &m);
void bind_queue(py::module_ &m);
void bind_testing(py::module_ &m);

// True while the interpreter shuts down. A thread other than the main one that takes the GIL
// then is ended by CPython with pthread_exit; the forced unwinding through a noexcept
// destructor (such as py::gil_scoped_release's) aborts the whole process ("terminate called
// without an active exception"). So such a thread never takes the GIL again: it parks until
// the exiting process takes it down.
inline bool interpreter_finalizing() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
}
void park_if_finalizing() noexcept;

// Releases the GIL around a blocking call (instead of py::gil_scoped_release, see above). The
// engine calls back into the interrupt hook, which takes the GIL for PyErr_CheckSignals,
// between wait slices.
class GilRelease {
  public:
    GilRelease() noexcept : state_(PyEval_SaveThread()) {}
    ~GilRelease() {
        park_if_finalizing();
        PyEval_RestoreThread(state_);
    }
    GilRelease(const GilRelease &) = delete;
    GilRelease &operator=(const GilRelease &) = delete;

  private:
    PyThreadState *state_;
};
using release_gil = py::call_guard<GilRelease>;

} // namespace shmipc::bindings
