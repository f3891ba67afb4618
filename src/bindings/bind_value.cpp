// shmipc._core.SharedValue: adapts ipc_core/shared_value.hpp. The Python layer (shmipc/_value.py)
// encodes str/bytes/ndarray into (type tag, meta, payload).
#include "bindings.hpp"

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/reactor.hpp"
#include "ipc_core/value/shared_value.hpp"

#include <memory>
#include <optional>
#include <pybind11/stl.h>
#include <span>

namespace shmipc::bindings {

namespace {

// Tag whose payload comes back as a writable bytearray (the array's own memory); every other
// tag comes back as bytes. Kept in sync with _value.py.
constexpr std::uint32_t kArrayTag = 3;
// Up to this capacity reads and writes hold the GIL throughout (copies take microseconds).
// The rule depends on the capacity only, never on one value's size, so that no thread ever
// waits for the writer mutex while holding the GIL if another thread of this process could
// hold that mutex while waiting for the GIL (a large-value read allocates its result under
// the GIL, and may do so while holding the mutex after losing too many races).
constexpr std::size_t kHoldGilBelow = 64 * 1024;

// Blocking calls keep their own reference, so close() from another thread never unmaps
// memory a waiter or copier still uses: it only asks them to stop and drops its reference.
class ValueHandle {
  public:
    explicit ValueHandle(std::unique_ptr<SharedValue> v) : v_(std::move(v)) {}
    ValueHandle(ValueHandle &&) noexcept = default;
    ValueHandle &operator=(ValueHandle &&) noexcept = default;
    ValueHandle(const ValueHandle &) = default;
    ValueHandle &operator=(const ValueHandle &) = default;
    // The reactor forgets this value's word before its mapping can go.
    ~ValueHandle() {
        if (v_)
            Reactor::release_owner(v_.get());
    }
    std::shared_ptr<SharedValue> get() const {
        auto v = v_;
        if (!v)
            throw Closed("SharedValue is closed");
        return v;
    }
    void close() {
        if (v_) {
            v_->request_close();
            Reactor::release_owner(v_.get()); // awaiting coroutines retry and find it closed
        }
        v_.reset();
    }
    bool closed() const { return !v_; }

  private:
    std::shared_ptr<SharedValue> v_;
};

std::span<const std::byte> as_span(const py::buffer_info &info) {
    return {static_cast<const std::byte *>(info.ptr),
            static_cast<std::size_t>(info.size * info.itemsize)};
}

py::object make_payload(std::uint32_t type, std::size_t n) {
    PyObject *o = type == kArrayTag
                      ? PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n))
                      : PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
    if (!o)
        throw py::error_already_set();
    return py::reinterpret_steal<py::object>(o);
}

std::byte *payload_ptr(const py::object &o) {
    if (PyByteArray_Check(o.ptr()))
        return reinterpret_cast<std::byte *>(PyByteArray_AS_STRING(o.ptr()));
    return reinterpret_cast<std::byte *>(PyBytes_AS_STRING(o.ptr()));
}

py::tuple read_raw(const ValueHandle &h) {
    auto v = h.get();
    py::object payload;
    auto alloc = [&](const ValueSnapshot &s) {
        payload = make_payload(s.type, static_cast<std::size_t>(s.nbytes));
        return payload_ptr(payload);
    };
    ValueSnapshot s;
    if (v->capacity() <= kHoldGilBelow) {
        s = v->read(alloc);
    } else {
        GilRelease nogil;
        s = v->read([&](const ValueSnapshot &snap) {
            park_if_finalizing();
            py::gil_scoped_acquire gil;
            payload = py::object(); // drop a payload of a lost race while we hold the GIL
            return alloc(snap);
        });
    }
    return py::make_tuple(s.version, s.type, py::bytes(s.meta), std::move(payload));
}

} // namespace

void bind_value(py::module_ &m) {
    py::class_<ValueHandle>(m, "SharedValue")
        .def_static(
            "create",
            [](const std::string &name, std::int64_t size, std::uint32_t mode, bool persistent) {
                if (size <= 0)
                    throw InvalidArgument("size must be > 0 bytes");
                return ValueHandle(SharedValue::create(name, static_cast<std::size_t>(size),
                                                       static_cast<mode_t>(mode), persistent));
            },
            py::arg("name"), py::arg("size"), py::arg("mode") = 0600, py::arg("persistent") = false)
        .def_static(
            "attach",
            [](const std::string &name, std::uint32_t trust_uid) {
                return ValueHandle(
                    SharedValue::attach(name, TrustPolicy{static_cast<uid_t>(trust_uid)}));
            },
            py::arg("name"), py::arg("trust_uid") = TrustPolicy::kOwnUser)
        .def("close", &ValueHandle::close)
        .def_property_readonly("closed", &ValueHandle::closed)
        .def_property_readonly("name", [](const ValueHandle &h) { return h.get()->name(); })
        .def_property_readonly("capacity", [](const ValueHandle &h) { return h.get()->capacity(); })
        .def_property_readonly("owner", [](const ValueHandle &h) { return h.get()->owner(); })
        .def_property_readonly("writable", [](const ValueHandle &h) { return h.get()->writable(); })
        .def_property_readonly("persistent",
                               [](const ValueHandle &h) { return h.get()->persistent(); })
        .def_property_readonly("version", [](const ValueHandle &h) { return h.get()->version(); })
        .def_property_readonly("writer_deaths",
                               [](const ValueHandle &h) { return h.get()->writer_deaths(); })
        .def(
            "write",
            [](const ValueHandle &h, std::uint32_t type, const py::bytes &meta,
               const py::buffer &data) {
                auto v = h.get();
                py::buffer_info info = data.request();
                std::string_view mv = meta;
                std::span<const std::byte> ms{reinterpret_cast<const std::byte *>(mv.data()),
                                              mv.size()};
                auto ds = as_span(info);
                if (v->capacity() <= kHoldGilBelow)
                    return v->write(type, ms, ds);
                GilRelease nogil;
                return v->write(type, ms, ds);
            },
            py::arg("type"), py::arg("meta"), py::arg("data"))
        .def("read", &read_raw)
        .def(
            "wait",
            [](const ValueHandle &h, std::uint64_t since, TimeoutArg timeout, int spin) {
                auto v = h.get();
                Deadline d(timeout);
                GilRelease nogil;
                return v->wait(since, d, spin);
            },
            py::arg("since"), py::arg("timeout") = py::none(),
            py::arg("spin") = SharedValue::kDefaultWaitSpin)
        .def(
            "_arm",
            [](const ValueHandle &h, std::shared_ptr<ReadySignal> sig, std::uint64_t token) {
                auto v = h.get();
                FutexWord *w = &v->changed_word();
                const void *owner = v.get();
                return Reactor::instance().arm(WatchSpec{w, owner, std::move(v), {}},
                                               std::move(sig), token);
            },
            py::arg("signal"), py::arg("token"))
        .def("_debug_state", [](const ValueHandle &h) {
            auto s = h.get()->debug_state();
            return py::make_tuple(s.current, s.seq[0], s.seq[1]);
        });

    m.def("shared_value_segment_size", &shared_value_segment_size, py::arg("capacity"));
}

} // namespace shmipc::bindings
