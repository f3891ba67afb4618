// shmipc._core.Buffer: the buffer protocol with export counting, and fd send/recv.
#include "bindings.hpp"

#include "ipc_core/base/bulk_copy.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/buffer/buffer.hpp"
#include "ipc_core/buffer/fd_passing.hpp"

#include <algorithm>
#include <cstring>
#include <optional>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <string>

namespace shmipc::bindings {

namespace {

// A buffer made by the engine (received or shared) waiting to become a Python object; if the
// Python side fails before adopting it, its destructor still releases everything.
struct PendingBuffer {
    std::unique_ptr<Buffer> buffer;
};

Buffer &get(py::handle self) {
    return *self.cast<Buffer *>();
}

// The base object of every ndarray shmipc makes over a Buffer: it holds one counted export
// and keeps the Buffer alive, but exposes no buffer interface of its own, so nothing can write
// through it once it is downgraded to read-only (after a send).
struct BufferView {
    py::object owner; // the Buffer
    Buffer *buffer;
    bool writable;
    BufferView(py::object o, Buffer *b, bool w) : owner(std::move(o)), buffer(b), writable(w) {}
    BufferView(const BufferView &) = delete;
    BufferView &operator=(const BufferView &) = delete;
    ~BufferView() { buffer->release_export(writable); }
    void downgrade() {
        if (writable)
            buffer->downgrade_export();
        writable = false;
    }
};

std::byte g_empty{}; // data pointer for zero-length views

int buffer_getbuffer(PyObject *obj, Py_buffer *view, int flags) {
    try {
        Buffer &b = get(obj);
        bool writable = (flags & PyBUF_WRITABLE) == PyBUF_WRITABLE;
        b.acquire_export(writable);
        // A read-only request on a writable buffer still yields a writable view if the consumer
        // did not ask; count it as writable then (it can write through it).
        bool give_writable = !b.readonly();
        if (give_writable && !writable) {
            b.release_export(false);
            b.acquire_export(true);
        }
        void *data = b.nbytes() ? static_cast<void *>(b.data()) : static_cast<void *>(&g_empty);
        if (PyBuffer_FillInfo(view, obj, data, static_cast<Py_ssize_t>(b.nbytes()),
                              give_writable ? 0 : 1, flags) != 0) {
            b.release_export(give_writable);
            return -1;
        }
        view->internal = reinterpret_cast<void *>(static_cast<std::uintptr_t>(give_writable));
        return 0;
    } catch (const BufferBusy &e) {
        PyErr_SetString(PyExc_BufferError, e.what());
    } catch (const Closed &e) {
        PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::exception &e) {
        PyErr_SetString(PyExc_BufferError, e.what());
    }
    view->obj = nullptr;
    return -1;
}

void buffer_releasebuffer(PyObject *obj, Py_buffer *view) {
    try {
        get(obj).release_export(reinterpret_cast<std::uintptr_t>(view->internal) != 0);
    } catch (...) {
    }
}

} // namespace

void bind_buffer(py::module_ &m) {
    // Copies `src` into the writable buffer `dst` at `offset` with the engine's bulk copy
    // (streaming stores for large payloads, on up to `threads` threads for very large ones),
    // the GIL released for large ones. For Python code
    // that fills shared memory another process reads next (shmipc.dask's memfd segments).
    m.def(
        "_copy_into",
        [](py::handle dst, std::size_t offset, py::handle src, unsigned threads) {
            PyBufferRef d(dst, true);
            PyBufferRef s(src);
            if (offset > d.size() || s.size() > d.size() - offset)
                throw py::value_error("_copy_into: " + std::to_string(s.size()) +
                                      " bytes do not fit at offset " + std::to_string(offset) +
                                      " of a " + std::to_string(d.size()) + "-byte buffer");
            auto *to = static_cast<std::byte *>(d.data()) + offset;
            const auto *from = static_cast<const std::byte *>(s.data());
            const bool overlap = to < from + s.size() && from < to + s.size();
            if (s.size() < (std::size_t{64} << 10) || overlap) {
                std::optional<GilRelease> nogil;
                if (s.size() >= (std::size_t{64} << 10))
                    nogil.emplace();
                std::memmove(to, from, s.size());
                return;
            }
            GilRelease nogil;
            parallel_copy(to, from, s.size(), std::clamp(threads, 1u, 8u));
        },
        py::arg("dst"), py::arg("offset"), py::arg("src"), py::arg("threads") = 1);
    py::class_<PendingBuffer>(m, "PendingBuffer");
    py::class_<BufferView>(m, "BufferView")
        .def_readonly("writable", &BufferView::writable)
        .def_property_readonly("buffer", [](const BufferView &v) { return v.owner; })
        .def("_downgrade", &BufferView::downgrade);

    py::class_<Buffer, std::unique_ptr<Buffer>>(
        m, "Buffer", py::custom_type_setup([](PyHeapTypeObject *ht) {
            ht->as_buffer.bf_getbuffer = buffer_getbuffer;
            ht->as_buffer.bf_releasebuffer = buffer_releasebuffer;
            ht->ht_type.tp_as_buffer = &ht->as_buffer;
        }))
        .def(py::init([](std::int64_t nbytes, bool zero) {
                 if (nbytes < 0)
                     throw InvalidArgument("nbytes must be >= 0");
                 return Buffer::create(static_cast<std::size_t>(nbytes), zero);
             }),
             py::arg("nbytes"), py::arg("zero") = true)
        .def(py::init([](PendingBuffer &p) {
            if (!p.buffer)
                throw InvalidArgument("pending buffer already adopted");
            return std::move(p.buffer);
        }))
        .def_property_readonly("nbytes", &Buffer::nbytes)
        .def_property_readonly("readonly", &Buffer::readonly)
        .def_property_readonly("sealed", &Buffer::sealed)
        .def_property_readonly("moved", &Buffer::moved)
        .def_property_readonly("closed", &Buffer::closed)
        .def_property_readonly("_exports", &Buffer::exports)
        .def_property_readonly("_writable_exports", &Buffer::writable_exports)
        .def_property_readonly("_address",
                               [](const Buffer &b) {
                                   return reinterpret_cast<std::uintptr_t>(b.nbytes() ? b.data()
                                                                                      : nullptr);
                               })
        .def(
            "_view",
            [](py::object self, py::dtype dtype, std::vector<py::ssize_t> shape, bool fortran,
               std::size_t offset, bool writable) {
                Buffer &b = get(self);
                auto itemsize = static_cast<std::size_t>(dtype.itemsize());
                std::size_t count = 1;
                for (auto d : shape) {
                    if (d < 0)
                        throw InvalidArgument("negative dimension");
                    if (d && count > SIZE_MAX / static_cast<std::size_t>(d))
                        throw InvalidArgument("shape too large");
                    count *= static_cast<std::size_t>(d);
                }
                if (itemsize && count > SIZE_MAX / itemsize)
                    throw InvalidArgument("shape too large");
                if (offset > b.nbytes() || count * itemsize > b.nbytes() - offset)
                    throw InvalidArgument("array of " + std::to_string(count * itemsize) +
                                          " bytes at offset " + std::to_string(offset) +
                                          " does not fit a buffer of " +
                                          std::to_string(b.nbytes()));
                writable = writable && !b.readonly();
                b.acquire_export(writable);
                auto *view = new BufferView(self, &b, writable);
                py::object holder = py::cast(view, py::return_value_policy::take_ownership);
                std::vector<py::ssize_t> strides(shape.size());
                py::ssize_t stride = static_cast<py::ssize_t>(itemsize);
                for (std::size_t k = 0; k < shape.size(); ++k) {
                    std::size_t i = fortran ? k : shape.size() - 1 - k;
                    strides[i] = stride;
                    stride *= std::max<py::ssize_t>(shape[i], 1);
                }
                void *ptr = b.nbytes() ? static_cast<void *>(b.data() + offset)
                                       : static_cast<void *>(&g_empty);
                py::array arr(dtype, shape, strides, ptr, holder);
                if (!writable)
                    py::detail::array_proxy(arr.ptr())->flags &=
                        ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
                return arr;
            },
            py::arg("dtype"), py::arg("shape"), py::arg("fortran"), py::arg("offset"),
            py::arg("writable"))
        .def("fileno", &Buffer::fileno)
        .def("_mark_shared", &Buffer::mark_shared)
        .def_property_readonly("_shared", &Buffer::shared)
        .def("seal", &Buffer::seal)
        .def("_close", &Buffer::close);

    m.def(
        "send_buffer",
        [](int sock, Buffer &b, py::bytes meta, py::bytes desc, std::size_t allowed_writable) {
            int fd = b.prepare_send(allowed_writable);
            // Hold a read-only export while the GIL is released so a concurrent close() cannot
            // unmap or recycle the buffer under us.
            b.acquire_export(false);
            struct Hold {
                Buffer &b;
                ~Hold() { b.release_export(false); }
            } hold{b};
            std::string m_ = meta, d_ = desc;
            {
                GilRelease nogil;
                send_fd_message(sock, fd, b.nbytes(), m_, d_);
            }
            b.mark_sent();
        },
        py::arg("sock"), py::arg("buf"), py::arg("meta"), py::arg("desc"),
        py::arg("allowed_writable_exports") = 0);

    m.def(
        "recv_buffer",
        [](int sock, TimeoutArg timeout) {
            FdMessage msg;
            {
                GilRelease nogil;
                msg = recv_fd_message(sock, Deadline(timeout));
            }
            PendingBuffer p{
                Buffer::adopt(std::move(msg.fd), msg.nbytes, msg.file_size, msg.write_sealed)};
            return py::make_tuple(std::move(p), py::bytes(msg.meta), py::bytes(msg.desc));
        },
        py::arg("sock"), py::arg("timeout") = py::none());

    m.def(
        "share_fd",
        [](int fd, std::size_t nbytes) {
            // Takes ownership of fd (a dup the caller gives away).
            return PendingBuffer{Buffer::share(UniqueFd(fd), nbytes)};
        },
        py::arg("fd"), py::arg("nbytes"));

    m.def("set_pool_limit", &set_pool_limit, py::arg("nbytes"));
    m.def("clear_pool", &clear_pool);
    m.def("pool_stats", [] {
        PoolStats s = pool_stats();
        py::dict d;
        d["entries"] = s.entries;
        d["bytes"] = s.bytes;
        d["limit_bytes"] = s.limit_bytes;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
    });
}

} // namespace shmipc::bindings
