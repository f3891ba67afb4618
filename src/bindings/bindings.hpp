// One bind_<concept> function per concept; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

#include <cmath>
#include <optional>
#include <string>
#include <string_view>

namespace shmipc::bindings {
namespace py = pybind11;

void bind_errors(py::module_ &m);
void bind_buffer(py::module_ &m);
void bind_segment(py::module_ &m);
void bind_heap(py::module_ &m);
void bind_descriptor(py::module_ &m);
void bind_dict(py::module_ &m);
void bind_stream(py::module_ &m);
void bind_value(py::module_ &m);
void bind_channel(py::module_ &m);
void bind_topic(py::module_ &m);
void bind_queue(py::module_ &m);
void bind_testing(py::module_ &m);
void bind_reactor(py::module_ &m);

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

// The one RAII holder of a Python buffer (Py_buffer) in the bindings: a contiguous view of any
// buffer-protocol object, read-only unless asked for writable, released on scope exit. The
// throwing constructor raises the object's own error (BufferError, TypeError); try_acquire
// leaves it set and returns false, for callers that fall back to another path.
class PyBufferRef {
  public:
    PyBufferRef() noexcept = default;
    explicit PyBufferRef(py::handle o, bool writable = false) {
        if (!try_acquire(o.ptr(), writable))
            throw py::error_already_set();
    }
    ~PyBufferRef() {
        if (held_)
            PyBuffer_Release(&view_);
    }
    PyBufferRef(const PyBufferRef &) = delete;
    PyBufferRef &operator=(const PyBufferRef &) = delete;

    [[nodiscard]] bool try_acquire(PyObject *o, bool writable = false) noexcept {
        if (held_)
            return true;
        held_ = PyObject_GetBuffer(o, &view_, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) == 0;
        return held_;
    }
    [[nodiscard]] void *data() const noexcept { return view_.buf; }
    [[nodiscard]] std::size_t size() const noexcept { return static_cast<std::size_t>(view_.len); }
    [[nodiscard]] std::string_view bytes() const noexcept {
        return {static_cast<const char *>(view_.buf), size()};
    }

  private:
    Py_buffer view_{};
    bool held_ = false;
};

// A `timeout` argument (API.md §0): None waits forever, a number of seconds >= 0 bounds the
// wait. Anything else is refused while the arguments are converted, with one message for every
// call: TypeError for a non-number (a bool or a str such as '1' included), ValueError for a
// negative or NaN number.
struct TimeoutArg {
    std::optional<double> seconds;
    operator std::optional<double>() const noexcept { return seconds; } // NOLINT: implicit
    explicit operator bool() const noexcept { return seconds.has_value(); }
    double operator*() const noexcept { return *seconds; }
};

// The conversion: throws py::type_error / py::value_error (or the pending Python error).
inline TimeoutArg timeout_of(PyObject *o) {
    TimeoutArg out;
    if (o == nullptr || o == Py_None)
        return out;
    if (PyBool_Check(o) || !(PyFloat_Check(o) || PyLong_Check(o)))
        throw py::type_error(std::string("timeout must be a number of seconds or None, not ") +
                             Py_TYPE(o)->tp_name);
    const double t = PyFloat_AsDouble(o);
    if (t == -1.0 && PyErr_Occurred())
        throw py::error_already_set();
    if (std::isnan(t))
        throw py::value_error("timeout must be a number of seconds, not NaN");
    if (t < 0)
        throw py::value_error("timeout must be >= 0 seconds (or None to wait forever), got " +
                              std::string(py::str(o)));
    out.seconds = t;
    return out;
}

} // namespace shmipc::bindings

namespace pybind11::detail {
template <> struct type_caster<shmipc::bindings::TimeoutArg> {
    PYBIND11_TYPE_CASTER(shmipc::bindings::TimeoutArg, const_name("float | None"));
    bool load(handle src, bool /*convert*/) {
        value = shmipc::bindings::timeout_of(src.ptr());
        return true;
    }
    static handle cast(const shmipc::bindings::TimeoutArg &t, return_value_policy, handle) {
        if (!t.seconds)
            return none().release();
        return PyFloat_FromDouble(*t.seconds);
    }
};
} // namespace pybind11::detail
