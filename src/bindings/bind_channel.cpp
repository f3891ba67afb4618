// shmipc._core.ChannelCore (base of shmipc.Channel) and _core.list_channels.
//
// Every operation first tries the non-blocking engine call with the GIL held (no GIL round trip
// on the fast path: a few hundred nanoseconds matter for ping-pong latency); only if it would
// wait does it release the GIL and block in the engine, which slices its sleeps and calls the
// interrupt hook (Ctrl-C) between slices.
#include "bind_heap.hpp"
#include "bindings.hpp"
#include "fastcall.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/channel/channel.hpp"
#include "ipc_core/sync/reactor.hpp"

#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shmipc::bindings {

namespace {

// Copies above this size release the GIL.
constexpr std::size_t kCopyWithoutGil = 64 * 1024;

struct ChannelCore {
    py::object heap; // the Python heap: kept alive by the channel
    std::unique_ptr<Channel> ch;

    // The engine channel, after checking that both it and its heap are open.
    Channel &get() {
        if (!ch)
            throw Closed("Channel is closed");
        (void)heap_of(heap); // Closed "Heap is closed" if the heap went first
        return *ch;
    }
    bool heap_open() {
        try {
            (void)heap_of(heap);
            return true;
        } catch (...) {
            return false;
        }
    }
    void close() {
        if (!ch)
            return;
        remove_heap_dependent(heap, this);
        Reactor::release_owner(ch.get()); // awaiting coroutines retry and find it closed
        if (heap_open()) {
            {
                GilRelease nogil; // may wait for a thread inside the handle to leave
                ch->close();
            }
            ch.reset();
        } else {
            ch->abandon(); // the heap (and its lock fd) is gone: nothing left to release
            ch.reset();
        }
    }
    static void close_for_heap(void *self) {
        auto *core = static_cast<ChannelCore *>(self);
        // The Python object of this core, kept alive across the close: while the GIL is
        // released a woken thread may drop the last other reference to the channel.
        py::object keep = py::cast(core, py::return_value_policy::reference);
        try {
            core->close();
        } catch (...) {
            // The heap is closing anyway: what the channel could not release goes with it.
            remove_heap_dependent(core->heap, core);
            if (core->ch) {
                core->ch->abandon();
                core->ch.reset();
            }
        }
    }
    ~ChannelCore() {
        if (heap)
            remove_heap_dependent(heap, this);
        if (ch)
            Reactor::release_owner(ch.get());
        if (ch && !heap_open())
            ch->abandon();
    }
};

Deadline deadline_of(TimeoutArg timeout) {
    return Deadline(timeout);
}

std::string meta_of(const std::optional<py::bytes> &meta) {
    return meta ? std::string(*meta) : std::string();
}

py::object message_block(ChannelCore &self, const ChannelMessage &m) {
    return make_block(self.heap, m.offset, static_cast<std::size_t>(m.length), /*owned=*/true);
}

// recv with the GIL held when a record is there, released while waiting.
ChannelMessage recv_message(ChannelCore &self, TimeoutArg timeout) {
    Channel &ch = self.get();
    if (auto m = ch.try_recv())
        return std::move(*m);
    Deadline d = deadline_of(timeout);
    GilRelease nogil;
    return ch.recv(d);
}

void send_block_impl(ChannelCore &s, py::handle blk, const std::string &md, TimeoutArg timeout,
                     bool allow_exports) {
    Channel &ch = s.get();
    auto ref = block_ref(blk);
    if (!ref || ref->heap != s.heap.ptr())
        throw InvalidArgument("not a live Block of this channel's heap");
    const RecordKind kind = md.empty() ? RecordKind::Block : RecordKind::Array;
    // Wait for room before detaching: a timeout leaves the Block in the caller's hands,
    // untouched. Then the send cannot wait (only this handle sends).
    if (!ch.ready_to_send()) {
        Deadline d = deadline_of(timeout);
        GilRelease nogil;
        ch.wait_writable(d);
    }
    const std::uint64_t off = detach_block(blk, allow_exports);
    try {
        if (!ch.try_send_block(off, ref->nbytes, kind, md)) {
            // Another thread of this handle got in between: wait our turn.
            Deadline d = deadline_of(timeout);
            GilRelease nogil;
            ch.send_block(off, ref->nbytes, kind, md, d);
        }
    } catch (...) {
        // Still ours (the engine gives it back on failure), but the caller's Block is already
        // released: wrap it so that it is freed, never leaked.
        py::object back = make_block(s.heap, off, ref->nbytes, true);
        throw;
    }
}

void send_bytes_impl(ChannelCore &s, const void *data, std::size_t n, const std::string &md,
                     TimeoutArg timeout) {
    Channel &ch = s.get();
    const RecordKind kind = md.empty() ? RecordKind::Block : RecordKind::Array;
    if (n <= kCopyWithoutGil && ch.try_send_bytes(data, n, kind, md))
        return;
    Deadline d = deadline_of(timeout);
    GilRelease nogil;
    ch.send_bytes(data, n, kind, md, d);
}

// --- METH_FASTCALL methods: the per-message hot paths skip pybind11's generic dispatch -----

PyObject *g_send_fallback = nullptr; // Channel._send_slow(self, obj, timeout), set by Python

using fastcall::translate_current;

PyObject *ch_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *a[2];
    TimeoutArg timeout;
    if (!fastcall::parse("send", args, nargs, kwnames, {"obj", "timeout"}, 1, a) ||
        !fastcall::timeout(a[1], timeout))
        return nullptr;
    PyObject *obj = a[0];
    try {
        ChannelCore &s = fastcall::self_of<ChannelCore>(self);
        if (auto ref = block_ref(obj); ref && ref->heap == s.heap.ptr()) {
            send_block_impl(s, obj, {}, timeout, false);
            Py_RETURN_NONE;
        }
        PyBufferRef view;
        if (!view.try_acquire(obj)) {
            // Not a contiguous buffer (a strided ndarray...): the Python layer handles it.
            if (!g_send_fallback)
                return nullptr;
            PyErr_Clear();
            PyObject *t = timeout ? PyFloat_FromDouble(*timeout) : Py_NewRef(Py_None);
            if (!t)
                return nullptr;
            PyObject *r = PyObject_CallFunctionObjArgs(g_send_fallback, self, obj, t, nullptr);
            Py_DECREF(t);
            return r;
        }
        send_bytes_impl(s, view.data(), view.size(), {}, timeout);
        Py_RETURN_NONE;
    } catch (...) {
        return translate_current();
    }
}

PyObject *ch_recv_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames) {
    TimeoutArg timeout;
    PyObject *a[1];
    if (!fastcall::parse("recv_bytes", args, nargs, kwnames, {"timeout"}, 0, a) ||
        !fastcall::timeout(a[0], timeout))
        return nullptr;
    try {
        ChannelCore &s = fastcall::self_of<ChannelCore>(self);
        Channel &ch = s.get();
        PyObject *out = nullptr;
        auto sink = [&](const void *p, std::size_t n) {
            out =
                PyBytes_FromStringAndSize(static_cast<const char *>(p), static_cast<Py_ssize_t>(n));
            if (!out)
                throw py::error_already_set();
        };
        Deadline d = deadline_of(timeout);
        for (;;) {
            if (ch.try_recv_many(1, sink) > 0)
                return out;
            GilRelease nogil;
            ch.wait_readable(d); // throws Timeout / EndOfStream / PeerDied
        }
    } catch (...) {
        return translate_current();
    }
}

PyObject *ch_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    TimeoutArg timeout;
    PyObject *a[1];
    if (!fastcall::parse("recv", args, nargs, kwnames, {"timeout"}, 0, a) ||
        !fastcall::timeout(a[0], timeout))
        return nullptr;
    try {
        ChannelCore &s = fastcall::self_of<ChannelCore>(self);
        return message_block(s, recv_message(s, timeout)).release().ptr();
    } catch (...) {
        return translate_current();
    }
}

PyMethodDef g_fast_methods[] = {
    {"send", fastcall::method(ch_send), METH_FASTCALL | METH_KEYWORDS,
     "send(obj, timeout=None)\n\n"
     "Sends one record; blocks while the channel is full.\n\n"
     "A Block of this heap is *moved* (zero copy): afterwards it is released in the sender\n"
     "(BufferError if views of it still exist; the block is then not sent). Anything else with\n"
     "the buffer protocol (bytes, bytearray, memoryview, ndarray, Buffer, a Block of another\n"
     "heap) is copied once into a new block of the heap.\n"
     "Raises TimeoutError, PeerDiedError (the receiver died while the channel was full),\n"
     "ChannelBusyError, BrokenPipeError (the stream was ended by an earlier sender),\n"
     "MemoryError (heap full)."},
    {"recv_bytes", fastcall::method(ch_recv_bytes), METH_FASTCALL | METH_KEYWORDS,
     "recv_bytes(timeout=None) -> bytes\n\n"
     "The next record copied into bytes (its block is freed at once). Blocks while empty;\n"
     "raises like recv()."},
    {"_recv_fast", fastcall::method(ch_recv), METH_FASTCALL | METH_KEYWORDS,
     "_recv_fast(timeout=None) -> Block"},
};

} // namespace

void bind_channel(py::module_ &m) {
    py::class_<ChannelCore> cls(m, "ChannelCore");
    cls.def(py::init([](py::object heap, const std::string &name, std::uint64_t capacity) {
                Heap &h = heap_of(heap);
                auto core = std::make_unique<ChannelCore>();
                core->heap = std::move(heap);
                {
                    GilRelease nogil; // may wait for a concurrent creator
                    core->ch = Channel::open(h, name, capacity);
                }
                add_heap_dependent(core->heap, core.get(), &ChannelCore::close_for_heap);
                return core;
            }),
            py::arg("heap"), py::arg("name"), py::arg("capacity"))
        .def_property_readonly("closed", [](ChannelCore &s) { return !s.ch || !s.heap_open(); })
        .def_property_readonly("_heap", [](ChannelCore &s) { return s.heap; })
        .def("_name", [](ChannelCore &s) { return s.get().name(); })
        .def("_capacity", [](ChannelCore &s) { return s.get().capacity(); })
        .def("_queued", [](ChannelCore &s) { return s.get().queued(); })
        .def("_role",
             [](ChannelCore &s) -> py::object {
                 switch (s.get().role()) {
                 case ChannelRole::Sender:
                     return py::str("sender");
                 case ChannelRole::Receiver:
                     return py::str("receiver");
                 default:
                     return py::none();
                 }
             })
        .def("_stream_ended", [](ChannelCore &s) { return s.get().stream_ended(); })
        .def("_alive",
             [](ChannelCore &s, bool sender) {
                 return s.get().endpoint_alive(sender ? ChannelRole::Sender
                                                      : ChannelRole::Receiver);
             })
        .def("_get_spin",
             [](ChannelCore &s) { return std::chrono::duration<double>(s.get().spin()).count(); })
        .def("_set_spin",
             [](ChannelCore &s, double seconds) {
                 if (!(seconds >= 0) || seconds > 10)
                     throw InvalidArgument("spin must be between 0 and 10 seconds");
                 s.get().set_spin(std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::duration<double>(seconds)));
             })
        .def(
            "_send_block",
            [](ChannelCore &s, py::handle blk, std::optional<py::bytes> meta, TimeoutArg timeout,
               bool allow_exports) {
                send_block_impl(s, blk, meta_of(meta), timeout, allow_exports);
            },
            py::arg("blk"), py::arg("meta") = py::none(), py::arg("timeout") = py::none(),
            py::arg("allow_exports") = false)
        .def(
            "_send_bytes",
            [](ChannelCore &s, py::handle obj, std::optional<py::bytes> meta, TimeoutArg timeout) {
                PyBufferRef v(obj);
                send_bytes_impl(s, v.data(), v.size(), meta_of(meta), timeout);
            },
            py::arg("obj"), py::arg("meta") = py::none(), py::arg("timeout") = py::none())
        .def(
            "_send_many",
            [](ChannelCore &s, py::object items_in, TimeoutArg timeout) {
                Channel &ch = s.get();
                // A list or tuple (PySequence_Fast makes one of anything iterable).
                py::object items = py::reinterpret_steal<py::object>(
                    PySequence_Fast(items_in.ptr(), "send_many() needs an iterable of buffers"));
                if (!items)
                    throw py::error_already_set();
                std::vector<std::unique_ptr<PyBufferRef>> views;
                std::vector<std::pair<const void *, std::size_t>> msgs;
                const std::size_t n =
                    static_cast<std::size_t>(PySequence_Fast_GET_SIZE(items.ptr()));
                views.reserve(n);
                msgs.reserve(n);
                for (std::size_t i = 0; i < n; ++i) {
                    PyObject *o = PySequence_Fast_GET_ITEM(items.ptr(), i);
                    if (PyBytes_CheckExact(o)) { // the common case, without a buffer export
                        msgs.emplace_back(PyBytes_AS_STRING(o),
                                          static_cast<std::size_t>(PyBytes_GET_SIZE(o)));
                        continue;
                    }
                    views.push_back(std::make_unique<PyBufferRef>(o));
                    msgs.emplace_back(views.back()->data(), views.back()->size());
                }
                Deadline d = deadline_of(timeout);
                GilRelease nogil;
                return ch.send_many(msgs, d);
            },
            py::arg("items"), py::arg("timeout") = py::none())
        .def(
            "_recv",
            [](ChannelCore &s, TimeoutArg timeout) {
                return message_block(s, recv_message(s, timeout));
            },
            py::arg("timeout") = py::none())
        .def(
            "_recv_message",
            [](ChannelCore &s, TimeoutArg timeout) {
                ChannelMessage msg = recv_message(s, timeout);
                py::object meta = msg.kind == RecordKind::Array ? py::object(py::bytes(msg.meta))
                                                                : py::object(py::none());
                return py::make_tuple(message_block(s, msg), meta);
            },
            py::arg("timeout") = py::none())
        .def(
            "_recv_many",
            [](ChannelCore &s, std::size_t max, TimeoutArg timeout) {
                Channel &ch = s.get();
                py::list out;
                auto sink = [&](const void *p, std::size_t n) {
                    PyObject *b = PyBytes_FromStringAndSize(static_cast<const char *>(p),
                                                            static_cast<Py_ssize_t>(n));
                    if (!b || PyList_Append(out.ptr(), b) != 0) {
                        Py_XDECREF(b);
                        throw py::error_already_set();
                    }
                    Py_DECREF(b);
                };
                if (max == 0)
                    return out;
                Deadline d = deadline_of(timeout);
                for (;;) {
                    if (ch.try_recv_many(max, sink) > 0)
                        return out;
                    GilRelease nogil;
                    ch.wait_readable(d); // throws Timeout / EndOfStream / PeerDied
                }
            },
            py::arg("max"), py::arg("timeout") = py::none())
        .def(
            "_poll",
            [](ChannelCore &s, TimeoutArg timeout) {
                Channel &ch = s.get();
                if (ch.queued() > 0 || ch.stream_ended())
                    return true;
                if (timeout && *timeout <= 0)
                    return false;
                Deadline d = deadline_of(timeout);
                GilRelease nogil;
                return ch.poll(d);
            },
            py::arg("timeout") = 0.0)
        .def("_release", [](ChannelCore &s) { s.get().release(); })
        .def("_abort",
             [](ChannelCore &s) {
                 Reactor::release_owner(s.ch.get());
                 s.get().abort();
             })
        .def(
            "_arm",
            [](ChannelCore &s, bool recv, std::shared_ptr<ReadySignal> sig, std::uint64_t token) {
                Channel &c = s.get();
                FutexWord *w = recv ? &c.recv_word() : &c.send_word();
                const ChannelRole peer = recv ? ChannelRole::Sender : ChannelRole::Receiver;
                Channel *cp = &c; // disarmed (release_owner) before the handle goes
                return Reactor::instance().arm(
                    WatchSpec{w, cp, nullptr, [cp, peer] { return cp->peer_dead(peer); }},
                    std::move(sig), token);
            },
            py::arg("recv"), py::arg("signal"), py::arg("token"))
        .def("_check_peer", [](ChannelCore &s) { s.get().check_peer(); })
        .def("_recv_ready",
             [](ChannelCore &s) {
                 // Would a receive return at once (a record, the end, a dead sender)? Claims no
                 // role; never waits.
                 Channel &c = s.get();
                 return c.queued() > 0 || c.stream_ended() || c.peer_dead(ChannelRole::Sender);
             })
        .def("_close", [](ChannelCore &s) { s.close(); });
    fastcall::install(cls, g_fast_methods);
    m.def("_set_channel_send_fallback", [](py::object fn) {
        Py_XDECREF(g_send_fallback);
        g_send_fallback = fn.release().ptr(); // kept for the life of the process
    });

    m.def("remove_channel", [](py::object heap, const std::string &name) {
        Heap &h = heap_of(heap);
        GilRelease nogil;
        return Channel::remove(h, name);
    });
    m.def("list_channels", [](py::object heap) {
        Heap &h = heap_of(heap);
        py::dict out;
        for (const ChannelInfo &c : Channel::list(h)) {
            py::dict d;
            d["capacity"] = c.capacity;
            d["queued"] = c.queued;
            d["sender_alive"] = c.sender_alive;
            d["receiver_alive"] = c.receiver_alive;
            out[py::str(c.name)] = d;
        }
        return out;
    });
}

} // namespace shmipc::bindings
