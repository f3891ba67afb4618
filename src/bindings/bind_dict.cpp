// shmipc._core.DictCore (base of shmipc.SharedDict): Python values <-> tagged entries of a
// SharedDict (src/ipc_core/containers/shared_dict.hpp), in the format of the dict value codec
// (src/ipc_core/containers/dict_codec.hpp, the one definition of what an entry's bytes mean).
//
// This file only converts Python objects to and from that codec's values. What only NumPy knows
// comes from two Python helpers registered with _set_dict_helpers (python/shmipc/_dict.py):
// `to_plain(value)` turns a value of another type into one this file encodes (a NumPy scalar
// into its item, a bytearray into bytes; TypeError for what a SharedDict cannot hold) or, for
// an ndarray, into (dtype text, structured, shape, C-ordered bytes); `array_from(dtype text,
// structured, shape, entry, offset)` turns a decoded array entry back into an ndarray.
//
// Locking and the GIL: the dict's lock is taken with the GIL held only by try_lock(); waiting
// for it always releases the GIL, so a thread holding the lock can always get the GIL back.
// Under the lock we only copy bytes into new objects that are not tracked by the garbage
// collector (str, bytes, bytearray): no Python code can run while the lock is held, so nothing
// can re-enter the dict from a finalizer (which would deadlock on our own lock).
#include "bind_heap.hpp"
#include "bindings.hpp"

#include "ipc_core/base/array_descriptor.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/containers/dict_codec.hpp"
#include "ipc_core/containers/shared_dict.hpp"

#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmipc::bindings {
namespace {

namespace codec = dict_codec;
constexpr std::size_t kReleaseGilCopy = 1 << 20; // bytes: copy larger values without the GIL

PyObject *g_to_plain = nullptr;   // value -> plain value | (dtype, structured, shape, data)
PyObject *g_array_from = nullptr; // (dtype, structured, shape, entry, offset) -> ndarray

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
    SharedDict::Guard lock() { return lock(get()); }
    // Locks `d`, which get() returned (one check of the heap per operation).
    SharedDict::Guard lock(SharedDict &d) {
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
    char fixed[9] = {};      // an int, float or bool value (checked by the codec later)
    std::size_t fixed_n = 0; // its length, up to 9 (one more than any such value: corrupt)
    PyObject *obj = nullptr; // new reference: str, bytes or bytearray (the other values)
    bool failed = false;     // a Python error is set
};

void read_value(void *ctx, std::uint8_t tag, const std::byte *p, std::size_t n) {
    auto *r = static_cast<Read *>(ctx);
    r->tag = tag;
    auto *c = reinterpret_cast<const char *>(p);
    switch (tag) {
    case codec::kInt:
    case codec::kFloat:
    case codec::kBool:
        r->fixed_n = n < sizeof r->fixed ? n : sizeof r->fixed;
        std::memcpy(r->fixed, c, r->fixed_n);
        return;
    case codec::kStr:
        r->obj = PyUnicode_DecodeUTF8(c, static_cast<Py_ssize_t>(n), "strict");
        break;
    case codec::kBytes:
        r->obj = PyBytes_FromStringAndSize(c, static_cast<Py_ssize_t>(n));
        break;
    default:
        r->obj = PyByteArray_FromStringAndSize(c, static_cast<Py_ssize_t>(n));
    }
    r->failed = r->obj == nullptr;
}

std::string_view bytearray_view(PyObject *b) {
    return {PyByteArray_AS_STRING(b), static_cast<std::size_t>(PyByteArray_GET_SIZE(b))};
}

py::object finish(Read &r) {
    if (r.failed)
        throw py::error_already_set();
    py::object obj = py::reinterpret_steal<py::object>(r.obj);
    r.obj = nullptr;
    std::string_view fixed(r.fixed, r.fixed_n);
    switch (r.tag) {
    case codec::kInt:
        return py::reinterpret_steal<py::object>(PyLong_FromLongLong(codec::decode_int(fixed)));
    case codec::kBool:
        return py::bool_(codec::decode_bool(fixed));
    case codec::kFloat:
        return py::float_(codec::decode_float(fixed));
    case codec::kStr:
    case codec::kBytes:
        return obj;
    case codec::kBigInt: {
        codec::check_big_int(bytearray_view(obj.ptr()));
        py::object int_type =
            py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject *>(&PyLong_Type));
        return int_type.attr("from_bytes")(obj, "little", py::arg("signed") = true);
    }
    case codec::kArray: {
        ArrayDescriptor d = codec::decode_array_entry(bytearray_view(obj.ptr()));
        if (!g_array_from)
            throw UsageError("shmipc._dict is not initialised");
        py::tuple shape(d.shape.size());
        for (std::size_t i = 0; i < d.shape.size(); ++i)
            shape[i] = py::int_(d.shape[i]);
        return py::reinterpret_borrow<py::object>(g_array_from)(
            py::str(d.dtype), py::bool_(d.structured), shape, obj, py::int_(d.offset));
    }
    default:
        throw UsageError("SharedDict entry with an unknown type tag " + std::to_string(r.tag) +
                         " (newer shmipc?)");
    }
}

SharedDict::Entry small_entry(SharedDict &d, std::string_view key, std::uint8_t tag,
                              std::string_view value) {
    SharedDict::Entry e = d.make_entry(key, tag, value.size());
    std::memcpy(e.value(), value.data(), value.size());
    return e;
}

// An entry of `head` followed by the bytes of `data` (copied without the GIL when large).
SharedDict::Entry entry_with_data(SharedDict &d, std::string_view key, std::uint8_t tag,
                                  std::string_view head, py::handle data) {
    PyBufferRef b(data);
    auto dn = b.size();
    SharedDict::Entry e = d.make_entry(key, tag, head.size() + dn);
    std::memcpy(e.value(), head.data(), head.size());
    if (dn) {
        std::byte *dst = e.value() + head.size();
        if (dn >= kReleaseGilCopy) {
            GilRelease nogil; // `b` keeps the buffer exported meanwhile
            std::memcpy(dst, b.data(), dn);
        } else {
            std::memcpy(dst, b.data(), dn);
        }
    }
    return e;
}

// Encodes `value` into a new (unpublished) entry for `key`.
SharedDict::Entry encode(SharedDict &d, std::string_view key, py::handle value, int depth = 0) {
    PyObject *v = value.ptr();
    if (PyBool_Check(v))
        return small_entry(d, key, codec::kBool, codec::encode_bool(v == Py_True));
    if (PyLong_Check(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred())
            throw py::error_already_set();
        if (!overflow)
            return small_entry(d, key, codec::kInt, codec::encode_int(x));
        // Beyond int64: as few two's-complement bytes as hold it with its sign.
        py::object n = py::reinterpret_borrow<py::object>(value).attr("bit_length")();
        auto nbytes = (n.cast<std::size_t>() + 8) / 8;
        py::bytes b = py::reinterpret_borrow<py::object>(value).attr("to_bytes")(
            nbytes, "little", py::arg("signed") = true);
        return small_entry(d, key, codec::kBigInt, std::string_view(b));
    }
    if (PyFloat_Check(v))
        return small_entry(d, key, codec::kFloat, codec::encode_float(PyFloat_AS_DOUBLE(v)));
    if (PyUnicode_Check(v)) {
        Py_ssize_t n = 0;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s)
            throw py::error_already_set();
        return small_entry(d, key, codec::kStr, {s, static_cast<std::size_t>(n)});
    }
    if (PyBytes_Check(v))
        return small_entry(d, key, codec::kBytes,
                           {PyBytes_AS_STRING(v), static_cast<std::size_t>(PyBytes_GET_SIZE(v))});
    // Everything else: the Python helper says what it is (or raises TypeError).
    if (!g_to_plain)
        throw UsageError("shmipc._dict is not initialised");
    if (depth > 0)
        throw UsageError("the dict helper returned a value it cannot encode");
    py::object plain = py::reinterpret_borrow<py::object>(g_to_plain)(value);
    if (!PyTuple_Check(plain.ptr()))
        return encode(d, key, plain, depth + 1);
    auto t = py::reinterpret_borrow<py::tuple>(plain); // an ndarray
    ArrayDescriptor a;
    a.dtype = t[0].cast<std::string>();
    a.structured = t[1].cast<bool>();
    for (py::handle n : py::reinterpret_borrow<py::tuple>(t[2]))
        a.shape.push_back(n.cast<std::int64_t>());
    std::string head = codec::array_entry_head(std::move(a));
    return entry_with_data(d, key, codec::kArray, head, t[3]);
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
        SharedDict &d = self.get();
        auto g = self.lock(d);
        found = d.get(g, k, &read_value, &r);
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
    m.def("_set_dict_helpers", [](py::object to_plain, py::object array_from) {
        to_plain.inc_ref(); // kept for the life of the process
        array_from.inc_ref();
        g_to_plain = to_plain.ptr();
        g_array_from = array_from.ptr();
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
                 auto g = self.lock(); // checks again: encode() may have run Python code
                 d.publish(g, std::move(e));
             })
        .def(
            "_set_raw",
            [](PyDict &self, py::handle key, std::uint8_t tag, py::bytes value) {
                // Tests only: an entry of any tag and bytes, as a hostile peer could write.
                std::string_view k = key_of(key);
                SharedDict &d = self.get();
                SharedDict::Entry e = small_entry(d, k, tag, std::string_view(value));
                auto g = self.lock();
                d.publish(g, std::move(e));
            },
            py::arg("key"), py::arg("tag"), py::arg("value"))
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
