// MessageQueue: the hot paths (put_bytes/get_bytes) try once with the GIL held, which costs no
// syscall and no GIL round trip; only a call that has to wait releases the GIL, sleeps in
// slices (Ctrl-C, timeout) and retries.
#include "bindings.hpp"

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

void put_bytes(const QueueHandle &h, const py::object &data, bool block, TimeoutArg timeout) {
    auto q = h.get();
    PyBufferRef b(data);
    auto n = b.size();
    bool done;
    if (n >= kCopyWithoutGil) {
        // A large copy must not stall the other threads; the exported buffer stays valid.
        GilRelease nogil;
        done = q->try_put(b.data(), n);
    } else {
        done = q->try_put(b.data(), n);
    }
    if (done)
        return;
    Deadline dl = make_deadline(block, timeout);
    if (!block)
        raise_full();
    for (;;) {
        MessageQueue::WaitResult r;
        {
            GilRelease nogil;
            r = q->wait_put_ready(dl);
        }
        if (n >= kCopyWithoutGil) {
            GilRelease nogil;
            done = q->try_put(b.data(), n);
        } else {
            done = q->try_put(b.data(), n);
        }
        if (done)
            return;
        if (r == MessageQueue::WaitResult::Timeout || dl.expired())
            raise_full();
    }
}

py::object get_bytes(const QueueHandle &h, bool block, TimeoutArg timeout) {
    auto q = h.get();
    GetCtx ctx;
    auto take = [&]() -> bool {
        bool got = q->try_get(&make_bytes, &ctx);
        if (got && !ctx.out)
            throw py::error_already_set(); // MemoryError; message kept
        return got;
    };
    if (take())
        return py::reinterpret_steal<py::object>(ctx.out);
    Deadline dl = make_deadline(block, timeout);
    if (!block)
        raise_empty();
    for (;;) {
        MessageQueue::WaitResult r;
        {
            GilRelease nogil;
            r = q->wait_get_ready(dl);
        }
        if (r == MessageQueue::WaitResult::Timeout || dl.expired()) {
            q->recover(&make_bytes, &ctx); // a last look for a dead consumer's message
            if (ctx.out)
                return py::reinterpret_steal<py::object>(ctx.out);
            if (take())
                return py::reinterpret_steal<py::object>(ctx.out);
            raise_empty();
        }
        if (take())
            return py::reinterpret_steal<py::object>(ctx.out);
    }
}

} // namespace

void bind_queue(py::module_ &m) {
    py::class_<QueueHandle>(m, "MessageQueue")
        .def_static(
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
        .def("put_bytes", &put_bytes, py::arg("data"), py::arg("block") = true,
             py::arg("timeout") = py::none())
        .def("get_bytes", &get_bytes, py::arg("block") = true, py::arg("timeout") = py::none())
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
