// shmipc._core.PublisherCore / SubscriberCore (bases of shmipc.Publisher / shmipc.Subscriber),
// _core.list_topics and _core.remove_topic.
//
// As for channels: every operation first tries the engine's non-blocking call with the GIL held,
// and only if it would wait releases the GIL and blocks in the engine (sliced sleeps, Ctrl-C
// between slices). A received sample is a read-only Block whose release (or garbage collection)
// gives the subscriber's reference back through a release hook (bind_heap.hpp).
#include "bind_heap.hpp"
#include "bindings.hpp"
#include "fastcall.hpp"

#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/reactor.hpp"
#include "ipc_core/topic/topic.hpp"

#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace shmipc::bindings {

namespace {

constexpr std::size_t kCopyWithoutGil = 64 * 1024;

bool heap_is_open(const py::object &heap) {
    try {
        (void)heap_of(heap);
        return true;
    } catch (...) {
        return false;
    }
}

struct PublisherCore {
    py::object heap;
    std::unique_ptr<TopicPublisher> pub;
    TopicPublisher &get() {
        if (!pub)
            throw Closed("Publisher is closed");
        (void)heap_of(heap);
        return *pub;
    }
    void close() {
        if (!pub)
            return;
        if (heap_is_open(heap)) {
            GilRelease nogil;
            pub->close();
        } else {
            pub->abandon();
        }
        pub.reset();
    }
    ~PublisherCore() {
        if (pub && !heap_is_open(heap))
            pub->abandon();
    }
};

struct SubscriberCore {
    py::object heap;
    std::unique_ptr<TopicSubscriber> sub;
    bool closed = false;
    TopicSubscriber &get() {
        if (!sub || closed)
            throw Closed("Subscriber is closed");
        (void)heap_of(heap);
        return *sub;
    }
    // The engine subscriber lives until every sample Block it handed out is gone (they keep
    // this object alive): close() only stops receiving.
    void close() {
        if (!sub || closed)
            return;
        closed = true;
        Reactor::release_owner(sub.get()); // awaiting coroutines retry and find it closed
        if (heap_is_open(heap)) {
            GilRelease nogil;
            sub->close();
        } else {
            sub->abandon();
        }
    }
    ~SubscriberCore() {
        if (sub)
            Reactor::release_owner(sub.get());
        if (sub && !heap_is_open(heap))
            sub->abandon();
    }
};

SubscriberCore *subscriber_of(PyObject *o) {
    auto *inst = reinterpret_cast<py::detail::instance *>(o);
    if (inst->simple_layout)
        return static_cast<SubscriberCore *>(inst->simple_value_holder[0]);
    return py::handle(o).cast<SubscriberCore *>();
}

void release_sample(PyObject *keeper, std::uint64_t header, std::uint64_t index) noexcept {
    try {
        SubscriberCore *s = subscriber_of(keeper);
        if (!s || !s->sub)
            return;
        if (!heap_is_open(s->heap)) {
            s->sub->abandon(); // the heap handle is gone: so is the reference (reaped)
            return;
        }
        s->sub->release(header, static_cast<std::uint32_t>(index), ForkStamp());
    } catch (...) {
        PyErr_Clear();
    }
}

py::object sample_block(py::handle self, SubscriberCore &s, const TopicSample &m) {
    try {
        return make_sample_block(s.heap, m.data, static_cast<std::size_t>(m.length), release_sample,
                                 self, m.header, m.held_index);
    } catch (...) {
        s.sub->release(m);
        throw;
    }
}

TopicSample recv_sample(SubscriberCore &s, std::optional<double> timeout) {
    TopicSubscriber &sub = s.get();
    if (auto m = sub.try_recv())
        return std::move(*m);
    Deadline d(timeout);
    GilRelease nogil;
    return sub.recv(d);
}

Overflow overflow_of(const std::string &s) {
    if (s == "block")
        return Overflow::Block;
    if (s == "drop_oldest")
        return Overflow::DropOldest;
    throw InvalidArgument("overflow must be 'block' or 'drop_oldest', got '" + s + "'");
}

const char *overflow_name(Overflow o) {
    return o == Overflow::Block ? "block" : "drop_oldest";
}

void publish_impl(PublisherCore &s, py::handle obj, const std::string &meta,
                  std::optional<double> timeout) {
    TopicPublisher &pub = s.get();
    if (auto ref = block_ref(obj); ref && ref->heap == s.heap.ptr() && ref->owned) {
        // Zero copy: the block moves into the topic. Wait for room first, so a timeout leaves
        // the caller's Block untouched.
        if (!pub.ready()) {
            Deadline d(timeout);
            GilRelease nogil;
            pub.wait_ready(d);
        }
        const std::uint64_t off = detach_block(obj, false);
        try {
            if (!pub.try_publish_block(off, ref->nbytes, meta)) {
                Deadline d(timeout);
                GilRelease nogil;
                pub.publish_block(off, ref->nbytes, meta, d);
            }
        } catch (...) {
            py::object back = make_block(s.heap, off, ref->nbytes, true); // freed, not leaked
            throw;
        }
        return;
    }
    PyBufferRef view(obj);
    const std::size_t n = view.size();
    if (n <= kCopyWithoutGil && pub.try_publish_bytes(view.data(), n, meta))
        return;
    Deadline d(timeout);
    GilRelease nogil;
    pub.publish_bytes(view.data(), n, meta, d);
}

// --- METH_FASTCALL methods: the per-message hot paths skip pybind11's generic dispatch -----

PyObject *g_publish_fallback = nullptr; // Publisher._publish_slow(self, obj, timeout)

using fastcall::translate_current;

PyObject *pub_publish(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *a[2];
    TimeoutArg timeout;
    if (!fastcall::parse("publish", args, nargs, kwnames, {"obj", "timeout"}, 1, a) ||
        !fastcall::timeout(a[1], timeout))
        return nullptr;
    PyObject *obj = a[0];
    try {
        PublisherCore &s = fastcall::self_of<PublisherCore>(self);
        const bool fast = PyBytes_CheckExact(obj) || PyByteArray_CheckExact(obj) ||
                          PyMemoryView_Check(obj) || block_ref(obj).has_value();
        if (!fast) {
            // ndarrays (dtype and shape travel), other buffers, errors: the Python layer.
            if (!g_publish_fallback) {
                PyErr_SetString(PyExc_RuntimeError, "shmipc._topic is not imported");
                return nullptr;
            }
            PyObject *t = timeout ? PyFloat_FromDouble(*timeout) : Py_NewRef(Py_None);
            if (!t)
                return nullptr;
            PyObject *r = PyObject_CallFunctionObjArgs(g_publish_fallback, self, obj, t, nullptr);
            Py_DECREF(t);
            return r;
        }
        publish_impl(s, obj, std::string(), timeout);
        Py_RETURN_NONE;
    } catch (...) {
        return translate_current();
    }
}

PyObject *sub_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    TimeoutArg timeout;
    PyObject *a[1];
    if (!fastcall::parse("recv", args, nargs, kwnames, {"timeout"}, 0, a) ||
        !fastcall::timeout(a[0], timeout))
        return nullptr;
    try {
        SubscriberCore &s = fastcall::self_of<SubscriberCore>(self);
        TopicSample m = recv_sample(s, timeout);
        return sample_block(self, s, m).release().ptr();
    } catch (...) {
        return translate_current();
    }
}

PyObject *sub_recv_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames) {
    TimeoutArg timeout;
    PyObject *a[1];
    if (!fastcall::parse("recv_bytes", args, nargs, kwnames, {"timeout"}, 0, a) ||
        !fastcall::timeout(a[0], timeout))
        return nullptr;
    try {
        SubscriberCore &s = fastcall::self_of<SubscriberCore>(self);
        TopicSubscriber &sub = s.get();
        struct Ctx {
            PyObject *out = nullptr;
            std::string buf; // without the GIL: the copy (never take the GIL under the lock)
            bool gil = true;
        } ctx;
        auto sink = [](void *c, const void *p, std::size_t n) {
            auto *x = static_cast<Ctx *>(c);
            if (!x->gil) {
                x->buf.assign(static_cast<const char *>(p), n);
                return;
            }
            x->out =
                PyBytes_FromStringAndSize(static_cast<const char *>(p), static_cast<Py_ssize_t>(n));
            if (!x->out)
                throw py::error_already_set();
        };
        if (sub.try_recv_copy(sink, &ctx))
            return ctx.out;
        Deadline d(timeout);
        {
            GilRelease nogil;
            ctx.gil = false;
            sub.recv_copy(d, sink, &ctx);
        }
        return PyBytes_FromStringAndSize(ctx.buf.data(), static_cast<Py_ssize_t>(ctx.buf.size()));
    } catch (...) {
        return translate_current();
    }
}

PyMethodDef g_pub_methods[] = {
    {"publish", fastcall::method(pub_publish), METH_FASTCALL | METH_KEYWORDS,
     "publish(obj, timeout=None)\n\n"
     "Publishes one sample to every subscriber.\n\n"
     "A Block of this heap is *moved* (zero copy): every subscriber receives that block, and it\n"
     "is released in the publisher (BufferError while views of it exist). An ndarray is copied\n"
     "once with its dtype and shape (recv_array rebuilds it); any other buffer (bytes,\n"
     "bytearray, memoryview...) is copied once.\n\n"
     "overflow='block': waits while a live subscriber's queue is full (TimeoutError after\n"
     "`timeout`; a dead subscriber never blocks it for more than about a second).\n"
     "overflow='drop_oldest' never waits."},
    {nullptr, nullptr, 0, nullptr}};

PyMethodDef g_sub_methods[] = {
    {"recv", fastcall::method(sub_recv), METH_FASTCALL | METH_KEYWORDS,
     "recv(timeout=None) -> Block\n\n"
     "The next sample as a read-only Block shared with every other subscriber (its memory is\n"
     "freed when the last holder releases it). Raises TimeoutError; EOFError once the\n"
     "publisher closed and everything was received; PeerDiedError if the publisher died (or\n"
     "left without closing) and everything was received."},
    {"recv_bytes", fastcall::method(sub_recv_bytes), METH_FASTCALL | METH_KEYWORDS,
     "recv_bytes(timeout=None) -> bytes\n\n"
     "The next sample copied into bytes (no reference is kept). Raises like recv()."},
    {nullptr, nullptr, 0, nullptr}};

} // namespace

void bind_topic(py::module_ &m) {
    py::class_<PublisherCore> pub_cls(m, "PublisherCore");
    pub_cls
        .def(py::init([](py::object heap, const std::string &name, std::uint32_t capacity,
                         std::uint32_t history, const std::string &overflow,
                         std::uint32_t max_subscribers, std::uint32_t max_held) {
                 Heap &h = heap_of(heap);
                 TopicOptions o;
                 o.capacity = capacity;
                 o.history = history;
                 o.overflow = overflow_of(overflow);
                 o.max_subscribers = max_subscribers;
                 o.max_held = max_held;
                 auto core = std::make_unique<PublisherCore>();
                 core->heap = std::move(heap);
                 {
                     GilRelease nogil;
                     core->pub = TopicPublisher::open(h, name, o);
                 }
                 return core;
             }),
             py::arg("heap"), py::arg("name"), py::arg("capacity"), py::arg("history"),
             py::arg("overflow"), py::arg("max_subscribers"), py::arg("max_held"))
        .def_property_readonly("closed",
                               [](PublisherCore &s) { return !s.pub || !heap_is_open(s.heap); })
        .def_property_readonly("_heap", [](PublisherCore &s) { return s.heap; })
        .def("_name", [](PublisherCore &s) { return s.get().name(); })
        .def("_geometry",
             [](PublisherCore &s) {
                 const TopicGeometry &g = s.get().geometry();
                 return py::make_tuple(g.capacity, g.history, overflow_name(g.overflow),
                                       g.max_subscribers, g.max_held);
             })
        .def("_subscribers", [](PublisherCore &s) { return s.get().subscribers(); })
        .def("_published", [](PublisherCore &s) { return s.get().published(); })
        .def("_set_spin",
             [](PublisherCore &s, double seconds) {
                 s.get().set_spin(std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::duration<double>(seconds)));
             })
        .def(
            "_publish",
            [](PublisherCore &s, py::handle obj, std::optional<py::bytes> meta,
               std::optional<double> timeout) {
                publish_impl(s, obj, meta ? std::string(*meta) : std::string(), timeout);
            },
            py::arg("obj"), py::arg("meta") = py::none(), py::arg("timeout") = py::none())
        .def("_ready", [](PublisherCore &s) { return s.get().ready(); })
        .def("_close", [](PublisherCore &s) { s.close(); });

    fastcall::install(pub_cls, g_pub_methods);

    py::class_<SubscriberCore> sub_cls(m, "SubscriberCore");
    sub_cls
        .def(py::init([](py::object heap, const std::string &name) {
                 Heap &h = heap_of(heap);
                 auto core = std::make_unique<SubscriberCore>();
                 core->heap = std::move(heap);
                 {
                     GilRelease nogil;
                     core->sub = TopicSubscriber::open(h, name);
                 }
                 return core;
             }),
             py::arg("heap"), py::arg("name"))
        .def_property_readonly(
            "closed", [](SubscriberCore &s) { return !s.sub || s.closed || !heap_is_open(s.heap); })
        .def_property_readonly("_heap", [](SubscriberCore &s) { return s.heap; })
        .def("_name", [](SubscriberCore &s) { return s.get().name(); })
        .def("_geometry",
             [](SubscriberCore &s) {
                 const TopicGeometry &g = s.get().geometry();
                 return py::make_tuple(g.capacity, g.history, overflow_name(g.overflow),
                                       g.max_subscribers, g.max_held);
             })
        .def("_pending", [](SubscriberCore &s) { return s.get().pending(); })
        .def("_missed", [](SubscriberCore &s) { return s.get().missed(); })
        .def("_set_spin",
             [](SubscriberCore &s, double seconds) {
                 s.get().set_spin(std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::duration<double>(seconds)));
             })
        .def(
            "_recv",
            [](py::object self, TimeoutArg timeout) {
                SubscriberCore &s = self.cast<SubscriberCore &>();
                TopicSample sample = recv_sample(s, timeout);
                return sample_block(self, s, sample);
            },
            py::arg("timeout") = py::none())
        .def(
            "_recv_message",
            [](py::object self, TimeoutArg timeout) {
                SubscriberCore &s = self.cast<SubscriberCore &>();
                TopicSample sample = recv_sample(s, timeout);
                py::object meta = sample.meta.empty() ? py::object(py::none())
                                                      : py::object(py::bytes(sample.meta));
                return py::make_tuple(sample_block(self, s, sample), meta);
            },
            py::arg("timeout") = py::none())
        .def(
            "_poll",
            [](SubscriberCore &s, TimeoutArg timeout) {
                TopicSubscriber &sub = s.get();
                if (sub.pending() > 0)
                    return true;
                Deadline d(timeout);
                if (timeout && *timeout <= 0)
                    return sub.poll(d);
                GilRelease nogil;
                return sub.poll(d);
            },
            py::arg("timeout") = 0.0)
        // For the awaitables and ready_fd() (shmipc/_async.py): one-shot registrations on the
        // topic's data word, fired by the next publish or close, or by a dead publisher.
        .def(
            "_arm",
            [](SubscriberCore &s, std::shared_ptr<ReadySignal> sig, std::uint64_t token) {
                TopicSubscriber &t = s.get();
                TopicSubscriber *tp = &t; // disarmed (release_owner) before the handle goes
                return Reactor::instance().arm(
                    WatchSpec{&t.data_word(), tp, nullptr, [tp] { return tp->publisher_dead(); }},
                    std::move(sig), token);
            },
            py::arg("signal"), py::arg("token"))
        .def("_recv_ready", [](SubscriberCore &s) { return s.get().recv_ready(); })
        .def("_publisher_dead", [](SubscriberCore &s) { return s.get().publisher_dead(); })
        .def("_close", [](SubscriberCore &s) { s.close(); });

    fastcall::install(sub_cls, g_sub_methods);
    m.def("_set_topic_publish_fallback", [](py::object fn) {
        Py_XDECREF(g_publish_fallback);
        g_publish_fallback = fn.release().ptr(); // kept for the life of the process
    });

    m.def("list_topics", [](py::object heap) {
        Heap &h = heap_of(heap);
        std::vector<TopicInfo> infos;
        {
            GilRelease nogil;
            infos = list_topics(h);
        }
        py::dict out;
        for (const TopicInfo &t : infos) {
            py::dict d;
            d["capacity"] = t.capacity;
            d["history"] = t.history;
            d["overflow"] = overflow_name(t.overflow);
            d["max_subscribers"] = t.max_subscribers;
            d["subscribers"] = t.subscribers;
            d["publisher_alive"] = t.publisher_alive;
            d["closed"] = t.closed;
            d["published"] = t.published;
            out[py::str(t.name)] = d;
        }
        return out;
    });
    m.def("remove_topic", [](py::object heap, const std::string &name) {
        Heap &h = heap_of(heap);
        GilRelease nogil;
        return remove_topic(h, name);
    });
}

} // namespace shmipc::bindings
