// METH_FASTCALL methods for the per-message hot paths (channel send/recv, topic publish/recv,
// queue put/get): pybind11's generic dispatcher costs ~400 instructions a call (overload
// resolution, a loader_life_support, type lookups in its internals), more than the engine's
// whole put or get. These helpers are the one way such a method finds its C++ object, parses
// its arguments, reports a C++ exception and is installed on a pybind11 class.
#pragma once

#include "bindings.hpp"

#include <cstddef>
#include <initializer_list>

namespace shmipc::bindings::fastcall {

// The C++ object of `self`, an instance of the pybind11 class the method was installed on (the
// descriptor checked its type). Held by value in the instance's simple layout, the usual case.
template <class T> T &self_of(PyObject *self) {
    auto *inst = reinterpret_cast<py::detail::instance *>(self);
    if (inst->simple_layout)
        return *static_cast<T *>(inst->simple_value_holder[0]);
    return *py::handle(self).cast<T *>();
}

// Sets the Python exception for the C++ exception being handled (pybind11's translators,
// ours included: bind_errors.cpp); returns nullptr for the method to return.
inline PyObject *translate_current() noexcept {
    try {
        py::detail::try_translate_exceptions();
    } catch (...) {
        PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
    }
    return nullptr;
}

// Matches the vectorcall arguments (args[0..nargs) positional, then one per name in kwnames)
// to the parameters `names`, in order: out[i] is the argument of names[i], or nullptr if not
// given. The first `required` parameters must be given. false with TypeError set (naming the
// function and the parameter) for too many arguments, an unknown keyword, a parameter given
// twice or a required one missing.
inline bool parse(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  std::initializer_list<const char *> names, std::size_t required, PyObject **out) {
    const auto n = static_cast<Py_ssize_t>(names.size());
    if (nargs > n) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", fname, n,
                     nargs);
        return false;
    }
    for (Py_ssize_t i = 0; i < n; ++i)
        out[i] = i < nargs ? args[i] : nullptr;
    if (kwnames) {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); ++k) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, k);
            Py_ssize_t i = 0;
            for (const char *name : names) {
                if (PyUnicode_CompareWithASCIIString(key, name) == 0)
                    break;
                ++i;
            }
            if (i == n) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument %R", fname,
                             key);
                return false;
            }
            if (out[i]) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%U'", fname,
                             key);
                return false;
            }
            out[i] = args[nargs + k];
        }
    }
    std::size_t i = 0;
    for (const char *name : names) {
        if (i >= required)
            break;
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, name);
            return false;
        }
        ++i;
    }
    return true;
}

// A truth value argument (queue.Queue's `block`: any object, by its truth); `dflt` if not
// given. false with the object's own error set if its __bool__ raised.
inline bool truth(PyObject *o, bool dflt, bool &out) noexcept {
    if (!o) {
        out = dflt;
        return true;
    }
    const int t = PyObject_IsTrue(o);
    if (t < 0)
        return false;
    out = t != 0;
    return true;
}

// A `timeout` argument (nullptr: not given, None), as the pybind11 caster converts it.
inline bool timeout(PyObject *o, TimeoutArg &out) noexcept {
    try {
        out = timeout_of(o);
        return true;
    } catch (py::error_already_set &e) {
        e.restore();
    } catch (py::builtin_exception &e) {
        e.set_error();
    } catch (...) {
        translate_current();
    }
    return false;
}

// Installs `defs` as methods of the pybind11 class `cls` (replacing any of the same name); an
// entry without a name (a CPython-style sentinel) is skipped.
template <std::size_t N> void install(py::handle cls, PyMethodDef (&defs)[N]) {
    for (PyMethodDef &def : defs) {
        if (!def.ml_name)
            continue;
        PyObject *descr = PyDescr_NewMethod(reinterpret_cast<PyTypeObject *>(cls.ptr()), &def);
        if (!descr || PyObject_SetAttrString(cls.ptr(), def.ml_name, descr) != 0) {
            Py_XDECREF(descr);
            throw py::error_already_set();
        }
        Py_DECREF(descr);
    }
}

// The PyCFunction slot of a METH_FASTCALL | METH_KEYWORDS method.
template <class F> PyCFunction method(F *f) noexcept {
    return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(f));
}

} // namespace shmipc::bindings::fastcall
