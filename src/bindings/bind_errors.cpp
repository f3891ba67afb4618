// The one place where engine errors become Python exceptions.
#include "bindings.hpp"

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"

#include <system_error>
#include <unistd.h>

namespace shmipc::bindings {

namespace {

PyObject *py_error(const char *name) {
    // Defined in python/shmipc/_errors.py (multiple inheritance is simpler in Python).
    // Deliberately leaked: a static py::object would be released after the interpreter is
    // finalized (a crash at exit).
    static PyObject *mod = py::module_::import("shmipc._errors").release().ptr();
    return py::handle(mod).attr(name).ptr();
}

void interrupt_hook() {
    park_if_finalizing();
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0)
        throw py::error_already_set();
}

// OSError(errno, msg) picks the subclass (FileExistsError, PermissionError, ...) from errno.
void set_os_error(int err, const char *what) {
    py::object exc =
        py::reinterpret_steal<py::object>(PyObject_CallFunction(PyExc_OSError, "is", err, what));
    if (exc)
        PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(exc.ptr())), exc.ptr());
}

} // namespace

void park_if_finalizing() noexcept {
    if (!interpreter_finalizing())
        return;
    for (;;)
        ::pause(); // the process is exiting; exit() ends this thread
}

void bind_errors(py::module_ &m) {
    set_interrupt_hook(&interrupt_hook);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p)
                std::rethrow_exception(p);
        } catch (const CorruptSegment &e) {
            PyErr_SetString(py_error("CorruptSegmentError"), e.what());
        } catch (const PeerDied &e) {
            PyErr_SetString(py_error("PeerDiedError"), e.what());
        } catch (const ChannelBusy &e) {
            PyErr_SetString(py_error("ChannelBusyError"), e.what());
        } catch (const Timeout &e) {
            PyErr_SetString(PyExc_TimeoutError, e.what());
        } catch (const EndOfStream &e) {
            PyErr_SetString(PyExc_EOFError, e.what());
        } catch (const OutOfMemory &e) {
            PyErr_SetString(PyExc_MemoryError, e.what());
        } catch (const BufferBusy &e) {
            PyErr_SetString(PyExc_BufferError, e.what());
        } catch (const Closed &e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const InvalidArgument &e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const UsageError &e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const OsError &e) {
            set_os_error(e.err(), e.what());
        } catch (const Error &e) { // LimitReached and any other engine error
            PyErr_SetString(py_error("ShmipcError"), e.what());
        } catch (const std::system_error &e) { // from the standard library (threads, mutexes)
            set_os_error(e.code().value(), e.what());
        } catch (const std::invalid_argument &e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });
    m.def("_check_interrupt", [] { check_interrupt(); });
}

} // namespace shmipc::bindings
