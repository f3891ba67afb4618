// shmipc._core.DictCore (base of shmipc.SharedDict): Python values <-> tagged entries of a
// SharedDict (src/ipc_core/shared_dict.hpp).
//
// Encoding (the tag byte of an entry): str, bytes, int (int64), float, bool are encoded here;
// anything else goes through the Python helper registered with _set_dict_helpers (big ints and
// ndarrays: a small header, then the bytes), and comes back through its decoder.
//
// Locking and the GIL: the dict's lock is taken with the GIL held only by try_lock(); waiting
// for it always releases the GIL, so a thread holding the lock can always get the GIL back.
// Under the lock we only copy bytes into new objects that are not tracked by the garbage
// collector (str, bytes, bytearray): no Python code can run while the lock is held, so nothing
// can re-enter the dict from a finalizer (which would deadlock on our own lock).
#include "bind_heap.hpp"
#include "bindings.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/containers/shared_dict.hpp"

#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmipc::bindings {
namespace {

enum Tag : std::uint8_t { kBytes = 1, kStr = 2, kInt = 3, kFloat = 4, kBool = 5 };
// Tags >= 16 belong to the Python helpers (big int, ndarray).
constexpr std::size_t kReleaseGilCopy = 1 << 20; // bytes: copy larger values without the GIL

PyObject *g_encode = nullptr; // value -> (tag, header: bytes, data: buffer | None)
PyObject *g_decode = nullptr; // (tag, blob: bytearray) -> value

struct PyDict {
    py::object heap; // the shmipc.Heap (keeps it referenced); None once closed
    std::optional<SharedDict> dict;
    std::string name;
    TimeoutArg timeout; // lock waits; None: forever (Ctrl-C still works)

    SharedDict &get() {
        if (!dict)
            throw Closed("SharedDict is closed");
        Heap &h = heap_of(heap); // Closed if the heap was closed
        if (&h != &dict->heap())
            throw Closed("SharedDict is closed");
        return *dict;
    }
    SharedDict::Guard lock() {
        SharedDict &d = get();
        if (auto g = d.try_lock())
            return g;
        GilRelease nogil;
        return d.lock(timeout);
    }
};

std::string_view key_of(py::handle key) {
    if (!PyUnicode_Check(key.ptr()))
        throw py::type_error(std::string("keys of a SharedDict are str, not ") +
                             Py_TYPE(key.ptr())->tp_name);
    Py_ssize_t n = 0;
    const char *s = PyUnicode_AsUTF8AndSize(key.ptr(), &n);
    if (!s)
        throw py::error_already_set();
    return {s, static_cast<std::size_t>(n)};
}

// One value read under the lock; turned into a Python object after the lock is released.
struct Read {
    std::uint8_t tag = 0;
    std::int64_t i = 0;
    double f = 0;
    PyObject *obj = nullptr; // new reference: str, bytes or bytearray (blob for the helper)
    bool failed = false;     // a Python error is set
};

void read_value(void *ctx, std::uint8_t tag, const std::byte *p, std::size_t n) {
    auto *r = static_cast<Read *>(ctx);
    r->tag = tag;
    auto *c = reinterpret_cast<const char *>(p);
    switch (tag) {
    case kInt:
        std::memcpy(&r->i, p, sizeof r->i);
        return;
    case kBool:
        r->i = static_cast<std::int64_t>(p[0]);
        return;
    case kFloat:
        std::memcpy(&r->f, p, sizeof r->f);
        return;
    case kStr:
        r->obj = PyUnicode_DecodeUTF8(c, static_cast<Py_ssize_t>(n), "strict");
        break;
    case kBytes:
        r->obj = PyBytes_FromStringAndSize(c, static_cast<Py_ssize_t>(n));
        break;
    default:
        r->obj = PyByteArray_FromStringAndSize(c, static_cast<Py_ssize_t>(n));
    }
    r->failed = r->obj == nullptr;
}

py::object finish(Read &r) {
    if (r.failed)
        throw py::error_already_set();
    py::object obj = py::reinterpret_steal<py::object>(r.obj);
    r.obj = nullptr;
    switch (r.tag) {
    case kInt:
        return py::reinterpret_steal<py::object>(PyLong_FromLongLong(r.i));
    case kBool:
        return py::bool_(r.i != 0);
    case kFloat:
        return py::float_(r.f);
    case kStr:
    case kBytes:
        return obj;
    default:
        if (!g_decode)
            throw UsageError("shmipc._dict is not initialised");
        return py::reinterpret_borrow<py::object>(g_decode)(r.tag, obj);
    }
}

// A Python buffer held for the duration of a copy.
struct HeldBuffer {
    Py_buffer view{};
    bool held = false;
    explicit HeldBuffer(py::handle o) {
        if (PyObject_GetBuffer(o.ptr(), &view, PyBUF_SIMPLE) != 0)
            throw py::error_already_set();
        held = true;
    }
    ~HeldBuffer() {
        if (held)
            PyBuffer_Release(&view);
    }
    HeldBuffer(const HeldBuffer &) = delete;
    HeldBuffer &operator=(const HeldBuffer &) = delete;
};

// Encodes `value` into a new (unpublished) entry for `key`.
SharedDict::Entry encode(SharedDict &d, std::string_view key, py::handle value) {
    PyObject *v = value.ptr();
    auto small = [&](std::uint8_t tag, const void *p, std::size_t n) {
        SharedDict::Entry e = d.make_entry(key, tag, n);
        std::memcpy(e.value(), p, n);
        return e;
    };
    if (PyBool_Check(v)) {
        std::uint8_t b = v == Py_True;
        return small(kBool, &b, 1);
    }
    if (PyLong_CheckExact(v) || (PyLong_Check(v) && !PyBool_Check(v))) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred())
            throw py::error_already_set();
        if (!overflow) {
            std::int64_t i = x;
            return small(kInt, &i, sizeof i);
        }
    } else if (PyFloat_Check(v)) {
        double f = PyFloat_AS_DOUBLE(v);
        return small(kFloat, &f, sizeof f);
    } else if (PyUnicode_Check(v)) {
        Py_ssize_t n = 0;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s)
            throw py::error_already_set();
        return small(kStr, s, static_cast<std::size_t>(n));
    } else if (PyBytes_Check(v)) {
        return small(kBytes, PyBytes_AS_STRING(v), static_cast<std::size_t>(PyBytes_GET_SIZE(v)));
    }
    // Everything else: the Python helper says how (or raises TypeError).
    if (!g_encode)
        throw UsageError("shmipc._dict is not initialised");
    py::tuple t = py::reinterpret_borrow<py::object>(g_encode)(value);
    auto tag = t[0].cast<std::uint8_t>();
    if (tag == 0) { // "store this Python value instead" (a NumPy scalar's .item())
        py::object plain = t[2];
        if (plain.ptr() == v)
            throw UsageError("dict encoder returned the same value");
        return encode(d, key, plain);
    }
    py::bytes header = t[1];
    std::string_view hv(PyBytes_AS_STRING(header.ptr()),
                        static_cast<std::size_t>(PyBytes_GET_SIZE(header.ptr())));
    if (tag == kBytes && t[2].is_none()) { // bytes-like, already copied into header
        return small(kBytes, hv.data(), hv.size());
    }
    std::optional<HeldBuffer> data;
    std::size_t dn = 0;
    if (!t[2].is_none()) {
        data.emplace(t[2]);
        dn = static_cast<std::size_t>(data->view.len);
    }
    SharedDict::Entry e = d.make_entry(key, tag, hv.size() + dn);
    std::memcpy(e.value(), hv.data(), hv.size());
    if (dn) {
        std::byte *dst = e.value() + hv.size();
        const void *src = data->view.buf;
        if (dn >= kReleaseGilCopy) {
            GilRelease nogil; // `data` keeps the buffer exported meanwhile
            std::memcpy(dst, src, dn);
        } else {
            std::memcpy(dst, src, dn);
        }
    }
    return e;
}

[[noreturn]] void raise_key_error(py::handle key) {
    PyErr_SetObject(PyExc_KeyError, key.ptr()); // KeyError(key), like dict
    throw py::error_already_set();
}

py::object get_or(PyDict &self, py::handle key, py::handle missing, bool raise) {
    std::string_view k = key_of(key);
    Read r;
    bool found;
    {
        auto g = self.lock();
        found = self.get().get(g, k, &read_value, &r);
    }
    if (!found) {
        if (raise)
            raise_key_error(key);
        return py::reinterpret_borrow<py::object>(missing);
    }
    return finish(r);
}

} // namespace

void bind_dict(py::module_ &m) {
    m.def("_set_dict_helpers", [](py::object enc, py::object dec) {
        enc.inc_ref(); // kept for the life of the process
        dec.inc_ref();
        g_encode = enc.ptr();
        g_decode = dec.ptr();
    });

    py::class_<PyDict> cls(m, "DictCore");
    cls.def(py::init([](py::object heap, const std::string &name, TimeoutArg timeout) {
                Heap &h = heap_of(heap);
                if (name.empty() || name.size() > kMaxNamedLength)
                    throw InvalidArgument("a dict name has 1.." + std::to_string(kMaxNamedLength) +
                                          " bytes, got " + std::to_string(name.size()));
                auto d = std::make_unique<PyDict>();
                {
                    GilRelease nogil; // may wait for a concurrent creator
                    d->dict.emplace(h, name, 10.0);
                }
                d->heap = std::move(heap);
                d->name = name;
                d->timeout = timeout;
                return d;
            }),
            py::arg("heap"), py::arg("name"), py::arg("timeout") = py::none())
        .def_property_readonly("closed", [](const PyDict &d) { return !d.dict; })
        .def_property_readonly("name", [](const PyDict &d) { return d.name; })
        .def_property_readonly("heap", [](const PyDict &d) { return d.heap; })
        .def_property(
            "timeout", [](const PyDict &d) { return d.timeout; },
            [](PyDict &d, TimeoutArg t) {
                if (t && !(*t >= 0))
                    throw InvalidArgument("timeout must be >= 0 or None");
                d.timeout = t;
            })
        .def("_close",
             [](PyDict &d) {
                 d.dict.reset();
                 d.heap = py::none();
             })
        .def("__getitem__",
             [](PyDict &self, py::handle key) { return get_or(self, key, py::none(), true); })
        .def(
            "get",
            [](PyDict &self, py::handle key, py::handle dflt) {
                return get_or(self, key, dflt, false);
            },
            py::arg("key"), py::arg("default") = py::none(),
            "The value of `key`, or `default` if absent (one atomic read).")
        .def("__setitem__",
             [](PyDict &self, py::handle key, py::handle value) {
                 std::string_view k = key_of(key);
                 SharedDict &d = self.get();
                 SharedDict::Entry e = encode(d, k, value);
                 auto g = self.lock();
                 d.publish(g, std::move(e));
             })
        .def("__delitem__",
             [](PyDict &self, py::handle key) {
                 std::string_view k = key_of(key);
                 bool found;
                 {
                     auto g = self.lock();
                     found = self.get().erase(g, k);
                 }
                 if (!found)
                     raise_key_error(key);
             })
        .def("__contains__",
             [](PyDict &self, py::handle key) {
                 self.get(); // ValueError when closed, whatever the key
                 if (!PyUnicode_Check(key.ptr()))
                     return false;
                 std::string_view k = key_of(key);
                 auto g = self.lock();
                 return self.get().contains(g, k);
             })
        .def("__len__",
             [](PyDict &self) {
                 auto g = self.lock();
                 return self.get().size(g);
             })
        .def(
            "_pop",
            [](PyDict &self, py::handle key) -> py::object {
                std::string_view k = key_of(key);
                Read r;
                bool found;
                {
                    auto g = self.lock();
                    found = self.get().erase(g, k, &read_value, &r);
                }
                if (!found) {
                    if (r.obj)
                        Py_DECREF(r.obj);
                    raise_key_error(key);
                }
                return finish(r);
            },
            "Removes `key` and returns its value (KeyError if absent), atomically.")
        .def(
            "setdefault",
            [](PyDict &self, py::handle key, py::handle dflt) -> py::object {
                if (dflt.is_none()) { // setdefault(k): only a lookup (None cannot be stored)
                    py::object v = get_or(self, key, Py_None, false);
                    if (v.is_none())
                        throw py::type_error("SharedDict values cannot be None");
                    return v;
                }
                std::string_view k = key_of(key);
                SharedDict &d = self.get();
                SharedDict::Entry e = encode(d, k, dflt);
                Read r;
                bool inserted;
                {
                    auto g = self.lock();
                    inserted = d.publish(g, std::move(e), true, &read_value, &r);
                }
                if (inserted)
                    return py::reinterpret_borrow<py::object>(dflt);
                return finish(r);
            },
            py::arg("key"), py::arg("default") = py::none(),
            "The value of `key`; if absent, stores `default` and returns it (atomically).")
        .def(
            "_keys",
            [](PyDict &self) {
                py::list out;
                std::vector<PyObject *> keys; // new references, made under the lock
                bool failed = false;
                struct Ctx {
                    std::vector<PyObject *> *keys;
                    bool *failed;
                } ctx{&keys, &failed};
                {
                    auto g = self.lock();
                    self.get().for_each(
                        g,
                        [](void *c, std::string_view k, std::uint8_t, const std::byte *,
                           std::size_t) {
                            auto *x = static_cast<Ctx *>(c);
                            if (*x->failed)
                                return;
                            PyObject *s = PyUnicode_DecodeUTF8(
                                k.data(), static_cast<Py_ssize_t>(k.size()), "strict");
                            if (!s)
                                *x->failed = true;
                            else
                                x->keys->push_back(s);
                        },
                        &ctx);
                }
                for (PyObject *k : keys)
                    out.append(py::reinterpret_steal<py::object>(k));
                if (failed)
                    throw py::error_already_set();
                return out;
            },
            "Every key, read atomically.")
        .def(
            "_items",
            [](PyDict &self) {
                struct Item {
                    PyObject *key;
                    Read value;
                };
                std::vector<Item> items;
                bool failed = false;
                struct Ctx {
                    std::vector<Item> *items;
                    bool *failed;
                } ctx{&items, &failed};
                {
                    auto g = self.lock();
                    self.get().for_each(
                        g,
                        [](void *c, std::string_view k, std::uint8_t tag, const std::byte *p,
                           std::size_t n) {
                            auto *x = static_cast<Ctx *>(c);
                            if (*x->failed)
                                return;
                            Item it{PyUnicode_DecodeUTF8(
                                        k.data(), static_cast<Py_ssize_t>(k.size()), "strict"),
                                    {}};
                            if (!it.key) {
                                *x->failed = true;
                                return;
                            }
                            read_value(&it.value, tag, p, n);
                            x->items->push_back(it);
                            if (it.value.failed)
                                *x->failed = true;
                        },
                        &ctx);
                }
                py::list out;
                std::exception_ptr err;
                for (auto &it : items) {
                    py::object k = py::reinterpret_steal<py::object>(it.key);
                    if (failed || err) {
                        Py_XDECREF(it.value.obj);
                        continue;
                    }
                    try {
                        out.append(py::make_tuple(k, finish(it.value)));
                    } catch (...) {
                        err = std::current_exception();
                    }
                }
                if (failed)
                    throw py::error_already_set();
                if (err)
                    std::rethrow_exception(err);
                return out;
            },
            "Every (key, value), read atomically.")
        .def(
            "clear",
            [](PyDict &self) {
                auto g = self.lock();
                self.get().clear(g);
            },
            "Removes every entry (atomically).")
        .def("_capacity",
             [](PyDict &self) {
                 auto g = self.lock();
                 return self.get().capacity(g);
             })
        .def("_hold_lock_for_test",
             [](PyDict &self) {
                 // Tests only: take the lock and never give it back (the process then dies
                 // or exits holding it, which the next locker must survive).
                 new SharedDict::Guard(self.lock()); // NOLINT: leaked on purpose
             })
        .def("_check_invariants", [](PyDict &self) {
            auto g = self.lock();
            self.get().check_invariants(g);
        });
}

} // namespace shmipc::bindings
