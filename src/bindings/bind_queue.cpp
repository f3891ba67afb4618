// MessageQueue: the hot paths (put_bytes/get_bytes) try once with the GIL held, which costs no
// syscall and no GIL round trip; only a call that has to wait releases the GIL, sleeps in
// slices (Ctrl-C, timeout) and retries.
#include "bindings.hpp"
#include "fastcall.hpp"

#include <pybind11/stl.h>

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/queue/message_queue.hpp"
#include "ipc_core/sync/reactor.hpp"

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

namespace shmipc::bindings {

namespace {

// A handle whose engine object stays alive while any call (running without the GIL) uses it,
// so close() from another thread never unmaps under a waiter.
struct QueueHandle {
    std::shared_ptr<MessageQueue> q;
    // The reactor forgets this queue's words before its mapping can go.
    ~QueueHandle() {
        if (q)
            Reactor::release_owner(q.get());
    }

    std::shared_ptr<MessageQueue> get() const {
        if (!q)
            throw Closed("MessageQueue is closed");
        return q;
    }
    // The engine object, for a call that holds the GIL throughout (close() needs the GIL, so it
    // cannot run meanwhile); a call that releases the GIL first takes a reference with get().
    MessageQueue &engine() const {
        if (!q)
            throw Closed("MessageQueue is closed");
        return *q;
    }
};

// No room (no message) in time: the engine's Timeout (TimeoutError); python/shmipc/_queue.py
// turns it into queue.Full (queue.Empty), the queue.Queue convention.
[[noreturn]] void raise_full() {
    throw Timeout("the queue is full");
}
[[noreturn]] void raise_empty() {
    throw Timeout("the queue is empty");
}

// queue.Queue semantics: block=False ignores timeout; a negative timeout is a ValueError.
Deadline make_deadline(bool block, TimeoutArg timeout) {
    if (!block)
        return Deadline(0.0);
    if (timeout && !(*timeout >= 0))
        throw InvalidArgument("'timeout' must be a non-negative number");
    return Deadline(timeout);
}

// Bytes from which put_bytes copies into the queue with the GIL released.
constexpr std::size_t kCopyWithoutGil = std::size_t{1} << 20;

// Set once by bind_queue (module import, GIL held) and never released: pickle's functions, the
// protocol, and the sentinel get_object returns when nothing came in time. (A function-local
// static initialised under the GIL could deadlock: the import may release the GIL while another
// thread waits for the static's guard holding it.)
PyObject *g_dumps = nullptr;
PyObject *g_loads = nullptr;
PyObject *g_protocol = nullptr;
PyObject *g_timed_out = nullptr;

struct GetCtx {
    PyObject *out = nullptr;
};

// Runs with the GIL held (try_get is only called with it).
bool make_bytes(void *ctx, const std::byte *data, std::size_t n) {
    auto *c = static_cast<GetCtx *>(ctx);
    c->out =
        PyBytes_FromStringAndSize(reinterpret_cast<const char *>(data), static_cast<Py_ssize_t>(n));
    return c->out != nullptr;
}

// Puts n bytes from p; false if there was no room in time (block/timeout as queue.Queue).
bool put_raw(const QueueHandle &h, const void *p, std::size_t n, bool block, TimeoutArg timeout) {
    MessageQueue &q = h.engine();
    std::shared_ptr<MessageQueue> keep; // q stays mapped while we run without the GIL
    auto attempt = [&] {
        if (n >= kCopyWithoutGil) {
            // A large copy must not stall the other threads; the caller keeps p valid.
            if (!keep)
                keep = h.get();
            GilRelease nogil;
            return q.try_put(p, n);
        }
        return q.try_put(p, n);
    };
    if (attempt())
        return true;
    Deadline dl = make_deadline(block, timeout);
    if (!block)
        return false;
    if (!keep)
        keep = h.get();
    for (;;) {
        MessageQueue::WaitResult r;
        {
            GilRelease nogil;
            r = q.wait_put_ready(dl);
        }
        if (attempt())
            return true;
        if (r == MessageQueue::WaitResult::Timeout || dl.expired())
            return false;
    }
}

// The next message as a new bytes object, or nullptr if none came in time.
PyObject *get_raw(const QueueHandle &h, bool block, TimeoutArg timeout) {
    MessageQueue &q = h.engine();
    GetCtx ctx;
    auto take = [&]() -> bool {
        bool got = q.try_get(&make_bytes, &ctx);
        if (got && !ctx.out)
            throw py::error_already_set(); // MemoryError; message kept
        return got;
    };
    if (take())
        return ctx.out;
    Deadline dl = make_deadline(block, timeout);
    if (!block)
        return nullptr;
    auto keep = h.get(); // q stays mapped while we wait without the GIL
    for (;;) {
        MessageQueue::WaitResult r;
        {
            GilRelease nogil;
            r = q.wait_get_ready(dl);
        }
        if (r == MessageQueue::WaitResult::Timeout || dl.expired()) {
            q.recover(&make_bytes, &ctx); // a last look for a dead consumer's message
            if (ctx.out)
                return ctx.out;
            return take() ? ctx.out : nullptr;
        }
        if (take())
            return ctx.out;
    }
}

void put_bytes(const QueueHandle &h, PyObject *data, bool block, TimeoutArg timeout) {
    bool done;
    if (PyBytes_CheckExact(data)) { // immutable, and kept alive by the caller: no export needed
        done = put_raw(h, PyBytes_AS_STRING(data), static_cast<std::size_t>(PyBytes_GET_SIZE(data)),
                       block, timeout);
    } else {
        PyBufferRef b(data);
        done = put_raw(h, b.data(), b.size(), block, timeout);
    }
    if (!done)
        raise_full();
}

PyObject *get_bytes(const QueueHandle &h, bool block, TimeoutArg timeout) {
    PyObject *raw = get_raw(h, block, timeout);
    if (!raw)
        raise_empty();
    return raw;
}

// An int, float, str, bool, None or complex (exact types: a subclass may pickle itself any way).
inline bool is_atom(PyObject *o) noexcept {
    PyTypeObject *t = Py_TYPE(o);
    return t == &PyLong_Type || t == &PyUnicode_Type || t == &PyFloat_Type || o == Py_None ||
           t == &PyBool_Type || t == &PyComplex_Type;
}

// True if pickling `o` can hand pickle no buffer at all, and runs no code of the user's: an
// atom, or a tuple or list of atoms, or a dict whose values are atoms (exact types). The same
// rule as shmipc/_objects.py's fast path; nothing here calls back into Python.
bool is_plain(PyObject *o) noexcept {
    if (is_atom(o))
        return true;
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyTuple_Type) {
        for (Py_ssize_t i = 0, n = PyTuple_GET_SIZE(o); i < n; ++i)
            if (!is_atom(PyTuple_GET_ITEM(o, i)))
                return false;
        return true;
    }
    if (t == &PyList_Type) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(o); ++i)
            if (!is_atom(PyList_GET_ITEM(o, i)))
                return false;
        return true;
    }
    if (t == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *key = nullptr;
        PyObject *value = nullptr;
        while (PyDict_Next(o, &pos, &key, &value))
            if (!is_atom(value))
                return false;
        return true;
    }
    return false;
}

// MessageQueue.put's fast path, in one call: a plain object (is_plain) is pickled (protocol 5)
// and put. True: put; False: no room in time; None: not plain (it may hold buffers for the
// companion heap), nothing done: the Python layer pickles it.
PyObject *put_object(const QueueHandle &h, PyObject *obj, bool block, TimeoutArg timeout) {
    h.engine(); // a closed queue is ValueError whatever the object
    if (!is_plain(obj))
        Py_RETURN_NONE;
    PyObject *args[] = {obj, g_protocol};
    auto data = py::reinterpret_steal<py::object>(PyObject_Vectorcall(g_dumps, args, 2, nullptr));
    if (!data)
        throw py::error_already_set();
    PyObject *d = data.ptr();
    bool done = put_raw(h, PyBytes_AS_STRING(d), static_cast<std::size_t>(PyBytes_GET_SIZE(d)),
                        block, timeout);
    return Py_NewRef(done ? Py_True : Py_False);
}

// MessageQueue.get's fast path, in one call: the next message unpickled, decode_oob(raw) for a
// message with out-of-band buffers (it starts with 0x00; a plain pickle starts with PROTO), or
// TIMED_OUT if none came in time.
PyObject *get_object(const QueueHandle &h, bool block, TimeoutArg timeout, PyObject *decode_oob) {
    PyObject *raw = get_raw(h, block, timeout);
    if (!raw)
        return Py_NewRef(g_timed_out);
    const bool oob = PyBytes_GET_SIZE(raw) > 0 && PyBytes_AS_STRING(raw)[0] == 0;
    PyObject *out = PyObject_CallOneArg(oob ? decode_oob : g_loads, raw);
    Py_DECREF(raw);
    return out; // nullptr: the decoder's exception is set
}

// ---- METH_FASTCALL entry points (fastcall.hpp): the per-message calls ---------------------
using fastcall::self_of;
using fastcall::translate_current;

PyObject *q_put_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw) {
    PyObject *a[3];
    bool block;
    TimeoutArg timeout;
    if (!fastcall::parse("put_bytes", args, nargs, kw, {"data", "block", "timeout"}, 1, a) ||
        !fastcall::truth(a[1], true, block) || !fastcall::timeout(a[2], timeout))
        return nullptr;
    try {
        put_bytes(self_of<QueueHandle>(self), a[0], block, timeout);
        Py_RETURN_NONE;
    } catch (...) {
        return translate_current();
    }
}

PyObject *q_get_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw) {
    PyObject *a[2];
    bool block;
    TimeoutArg timeout;
    if (!fastcall::parse("get_bytes", args, nargs, kw, {"block", "timeout"}, 0, a) ||
        !fastcall::truth(a[0], true, block) || !fastcall::timeout(a[1], timeout))
        return nullptr;
    try {
        return get_bytes(self_of<QueueHandle>(self), block, timeout);
    } catch (...) {
        return translate_current();
    }
}

PyObject *q_put_object(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw) {
    PyObject *a[3];
    bool block;
    TimeoutArg timeout;
    if (!fastcall::parse("put_object", args, nargs, kw, {"obj", "block", "timeout"}, 1, a) ||
        !fastcall::truth(a[1], true, block) || !fastcall::timeout(a[2], timeout))
        return nullptr;
    try {
        return put_object(self_of<QueueHandle>(self), a[0], block, timeout);
    } catch (...) {
        return translate_current();
    }
}

PyObject *q_get_object(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw) {
    PyObject *a[3];
    bool block;
    TimeoutArg timeout;
    if (!fastcall::parse("get_object", args, nargs, kw, {"block", "timeout", "decode_oob"}, 3, a) ||
        !fastcall::truth(a[0], true, block) || !fastcall::timeout(a[1], timeout))
        return nullptr;
    try {
        return get_object(self_of<QueueHandle>(self), block, timeout, a[2]);
    } catch (...) {
        return translate_current();
    }
}

PyMethodDef g_fast_methods[] = {
    {"put_bytes", fastcall::method(q_put_bytes), METH_FASTCALL | METH_KEYWORDS,
     "put_bytes(data, block=True, timeout=None)\n\n"
     "Puts the bytes of any buffer-protocol object (one copy). TimeoutError if there is no\n"
     "room in time (at once with block=False), ValueError if larger than max_message_size or\n"
     "the queue is closed."},
    {"get_bytes", fastcall::method(q_get_bytes), METH_FASTCALL | METH_KEYWORDS,
     "get_bytes(block=True, timeout=None) -> bytes\n\n"
     "Removes and returns the next message. TimeoutError if none comes in time."},
    {"put_object", fastcall::method(q_put_object), METH_FASTCALL | METH_KEYWORDS,
     "put_object(obj, block=True, timeout=None) -> bool | None\n\n"
     "Pickles (protocol 5) and puts an object that holds no buffer: an int, float, str, bool,\n"
     "None or complex, or a tuple, list or dict (its values) of those. True: put; False: no\n"
     "room in time; None: another object, nothing done."},
    {"get_object", fastcall::method(q_get_object), METH_FASTCALL | METH_KEYWORDS,
     "get_object(block, timeout, decode_oob) -> Any\n\n"
     "Removes the next message and returns it unpickled, or decode_oob(message) for one with\n"
     "out-of-band buffers (it starts with 0x00), or TIMED_OUT if none comes in time."},
};

} // namespace

void bind_queue(py::module_ &m) {
    auto pickle = py::module_::import("pickle");
    g_dumps = py::object(pickle.attr("dumps")).release().ptr();
    g_loads = py::object(pickle.attr("loads")).release().ptr();
    g_protocol = py::int_(5).release().ptr();
    g_timed_out = py::object(py::module_::import("builtins").attr("object")()).release().ptr();
    m.attr("TIMED_OUT") = py::reinterpret_borrow<py::object>(g_timed_out);
    py::class_<QueueHandle> cls(m, "MessageQueue");
    fastcall::install(cls, g_fast_methods);
    cls.def_static(
           "create",
           [](const std::string &name, std::size_t maxsize, std::size_t max_message_size,
              unsigned mode, bool persistent) {
               return QueueHandle{std::make_shared<MessageQueue>(
                   MessageQueue::create(name, maxsize, max_message_size, mode, persistent))};
           },
           py::arg("name"), py::arg("maxsize"), py::arg("max_message_size"), py::arg("mode"),
           py::arg("persistent"))
        .def_static(
            "attach",
            [](const std::string &name, std::uint32_t trust_uid) {
                return QueueHandle{std::make_shared<MessageQueue>(
                    MessageQueue::attach(name, TrustPolicy{static_cast<uid_t>(trust_uid)}))};
            },
            py::arg("name"), py::arg("trust_uid") = TrustPolicy::kOwnUser)
        .def("qsize", [](const QueueHandle &h) { return h.get()->size(); })
        .def_property_readonly("maxsize", [](const QueueHandle &h) { return h.get()->capacity(); })
        .def_property_readonly("max_message_size",
                               [](const QueueHandle &h) { return h.get()->max_message_size(); })
        .def_property_readonly("name", [](const QueueHandle &h) { return h.get()->name(); })
        .def_property_readonly("owner", [](const QueueHandle &h) { return h.get()->owner(); })
        .def_property_readonly("client_index",
                               [](const QueueHandle &h) { return h.get()->client_index(); })
        .def("recover",
             [](const QueueHandle &h) {
                 // Repairs half-written messages of dead producers (no delivery here).
                 return h.get()->recover();
             })
        .def_property_readonly("closed", [](const QueueHandle &h) { return !h.q; })
        .def(
            "_arm",
            [](const QueueHandle &h, bool get, std::shared_ptr<ReadySignal> sig,
               std::uint64_t token) {
                auto q = h.get();
                FutexWord *w = get ? &q->get_word() : &q->put_word();
                const void *owner = q.get();
                // Every second the waiter retries through the blocking path with a zero
                // timeout, which repairs what dead clients left claimed (their messages).
                std::function<bool()> check;
                if (get)
                    check = [n = 0]() mutable { return ++n >= 20; };
                return Reactor::instance().arm(WatchSpec{w, owner, std::move(q), std::move(check)},
                                               std::move(sig), token);
            },
            py::arg("get"), py::arg("signal"), py::arg("token"))
        .def("close", [](QueueHandle &h) {
            // A thread blocked in get()/put() of this handle leaves with ValueError (closed),
            // awaiting coroutines find it closed, then the last reference unmaps.
            if (h.q) {
                Reactor::release_owner(h.q.get());
                h.q->request_close();
            }
            h.q.reset();
        });
}

} // namespace shmipc::bindings
