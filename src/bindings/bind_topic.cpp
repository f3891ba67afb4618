// shmipc._core.PublisherCore / SubscriberCore (bases of shmipc.Publisher / shmipc.Subscriber),
// _core.list_topics and _core.remove_topic.
//
// As for channels: every operation first tries the engine's non-blocking call with the GIL held,
// and only if it would wait releases the GIL and blocks in the engine (sliced sleeps, Ctrl-C
// between slices). A received sample is a read-only Block whose release (or garbage collection)
// gives the subscriber's reference back through a release hook (bind_heap.hpp).
#include "bind_heap.hpp"
#include "bindings.hpp"

#include "ipc_core/base/errors.hpp"
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
        if (heap_is_open(heap)) {
            GilRelease nogil;
            sub->close();
        } else {
            sub->abandon();
        }
    }
    ~SubscriberCore() {
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
        return make_sample_block(s.heap, m.data, static_cast<std::size_t>(m.length),
                                 release_sample, self, m.header, m.held_index);
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
    Py_buffer view;
    if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_SIMPLE) != 0)
        throw py::error_already_set();
    struct Release {
        Py_buffer *v;
        ~Release() { PyBuffer_Release(v); }
    } release{&view};
    const std::size_t n = static_cast<std::size_t>(view.len);
    if (n <= kCopyWithoutGil && pub.try_publish_bytes(view.buf, n, meta))
        return;
    Deadline d(timeout);
    GilRelease nogil;
    pub.publish_bytes(view.buf, n, meta, d);
}

} // namespace

void bind_topic(py::module_ &m) {
    py::class_<PublisherCore>(m, "PublisherCore")
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

    py::class_<SubscriberCore>(m, "SubscriberCore")
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
            [](py::object self, std::optional<double> timeout) {
                SubscriberCore &s = self.cast<SubscriberCore &>();
                TopicSample m = recv_sample(s, timeout);
                return sample_block(self, s, m);
            },
            py::arg("timeout") = py::none())
        .def(
            "_recv_message",
            [](py::object self, std::optional<double> timeout) {
                SubscriberCore &s = self.cast<SubscriberCore &>();
                TopicSample m = recv_sample(s, timeout);
                py::object meta = m.meta.empty() ? py::object(py::none())
                                                 : py::object(py::bytes(m.meta));
                return py::make_tuple(sample_block(self, s, m), meta);
            },
            py::arg("timeout") = py::none())
        .def(
            "_recv_bytes",
            [](SubscriberCore &s, std::optional<double> timeout) -> py::object {
                TopicSubscriber &sub = s.get();
                PyObject *out = nullptr;
                auto sink = [&](const void *p, std::size_t n) {
                    out = PyBytes_FromStringAndSize(static_cast<const char *>(p),
                                                    static_cast<Py_ssize_t>(n));
                };
                if (!sub.try_recv_copy(sink)) {
                    TopicSample m;
                    {
                        Deadline d(timeout);
                        GilRelease nogil;
                        m = sub.recv(d);
                    }
                    out = PyBytes_FromStringAndSize(static_cast<const char *>(sub.sample_ptr(m)),
                                                    static_cast<Py_ssize_t>(m.length));
                    sub.release(m);
                }
                if (!out)
                    throw py::error_already_set();
                return py::reinterpret_steal<py::object>(out);
            },
            py::arg("timeout") = py::none())
        .def(
            "_poll",
            [](SubscriberCore &s, std::optional<double> timeout) {
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
        .def("_close", [](SubscriberCore &s) { s.close(); });

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
