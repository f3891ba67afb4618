// shmipc._core.HeapCore (base of shmipc.Heap) and shmipc._core.Block (base of shmipc.Block).
//
// Block is a plain CPython type and HeapCore.allocate a METH_FASTCALL function: the
// `blk = heap.allocate(64); blk.release()` loop is the hot path of the package, and pybind11's
// generic dispatch and instance creation would cost more than the allocator itself.
#include "bind_heap.hpp"

#include "ipc_core/base/errors.hpp"

#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <pthread.h>
#include <thread>

namespace shmipc::bindings {

namespace {

// The C++ state behind one Python heap object.
struct PyHeap {
    std::unique_ptr<Heap> heap;
    Py_ssize_t exports = 0; // live buffer views of its Blocks: close() refuses while > 0
    std::vector<std::pair<void *, void (*)(void *)>> dependents; // see add_heap_dependent
    Heap &get() {
        if (!heap)
            throw Closed("Heap is closed");
        return *heap;
    }
};

struct BlockObject {
    PyObject_HEAD PyObject *owner; // the Python heap (strong reference)
    PyHeap *heap;                  // valid while `owner` is referenced
    std::uint64_t offset;          // payload offset
    Py_ssize_t nbytes;
    char *ptr;
    Py_ssize_t exports;
    bool released;
    bool owned;          // release()/GC frees the memory
    bool readonly;       // buffer views are read-only (a topic sample shared by subscribers)
    unsigned generation; // process_generation() at creation: a fork child never frees
                         // the blocks it inherited (they are its parent's)
    // Not owned, but a reference to give back on release (a topic sample): called once, with
    // the GIL held, in the process that received it.
    BlockReleaseHook on_release;
    PyObject *keeper; // strong reference kept for on_release (the subscriber)
    std::uint64_t cookie_a;
    std::uint64_t cookie_b;
};

PyTypeObject *g_block_base = nullptr; // _core.Block
PyTypeObject *g_block_type = nullptr; // what allocate() makes (shmipc.Block once registered)
PyTypeObject *g_heap_type = nullptr;  // _core.HeapCore

PyHeap *pyheap_of(PyObject *self) {
    if (!g_heap_type || !PyObject_TypeCheck(self, g_heap_type))
        return nullptr;
    auto *inst = reinterpret_cast<py::detail::instance *>(self);
    if (inst->simple_layout)
        return static_cast<PyHeap *>(inst->simple_value_holder[0]);
    return py::handle(self).cast<PyHeap *>();
}

bool is_block(PyObject *o) {
    return g_block_base && PyObject_TypeCheck(o, g_block_base);
}

// Dead Block objects kept for reuse (like CPython's float freelist): saves an allocation and
// a free per block on the hot path. Only for the exact base type (no subclass state).
constexpr int kBlockFreelistMax = 256;
PyObject *g_block_freelist[kBlockFreelistMax];
int g_block_freelist_len = 0;
PyObject *g_as_array_helper = nullptr; // shmipc._heap._block_as_array

PyObject *new_block(PyObject *owner, PyHeap *ph, std::uint64_t off, Py_ssize_t n, bool owned) {
    PyObject *o;
    if (g_block_type == g_block_base && g_block_freelist_len > 0) {
        o = g_block_freelist[--g_block_freelist_len];
        // GIL held: the freelist is only touched with it. Re-initialise the header.
        PyObject_Init(o, g_block_type);
    } else {
        o = g_block_type->tp_alloc(g_block_type, 0);
    }
    if (!o)
        return nullptr;
    auto *b = reinterpret_cast<BlockObject *>(o);
    Py_INCREF(owner);
    b->owner = owner;
    b->heap = ph;
    b->offset = off;
    b->nbytes = n;
    b->ptr = static_cast<char *>(ph->heap->to_ptr(off));
    b->exports = 0;
    b->released = false;
    b->owned = owned;
    b->readonly = false;
    b->generation = process_generation();
    b->on_release = nullptr;
    b->keeper = nullptr;
    b->cookie_a = b->cookie_b = 0;
    return o;
}

// Gives a topic sample's reference back (once), then drops the keeper.
void run_release_hook(BlockObject *b) noexcept {
    BlockReleaseHook fn = b->on_release;
    b->on_release = nullptr;
    if (fn && b->keeper && b->generation == process_generation())
        fn(b->keeper, b->cookie_a, b->cookie_b);
    Py_CLEAR(b->keeper);
}

// Translates the C++ exception being handled into a Python one (the module's translators).
PyObject *translate() {
    try {
        py::detail::try_translate_exceptions();
    } catch (...) {
        PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
    }
    return nullptr;
}

// heap.allocate(nbytes, align=64, timeout=0) -> Block
PyObject *heap_allocate(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames) {
    PyObject *nbytes_o = nargs > 0 ? args[0] : nullptr;
    PyObject *align_o = nargs > 1 ? args[1] : nullptr;
    PyObject *timeout_o = nargs > 2 ? args[2] : nullptr;
    if (nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "allocate() takes at most 3 positional arguments");
        return nullptr;
    }
    if (kwnames) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; ++i) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            PyObject *v = args[nargs + i];
            if (PyUnicode_CompareWithASCIIString(k, "nbytes") == 0 && !nbytes_o)
                nbytes_o = v;
            else if (PyUnicode_CompareWithASCIIString(k, "align") == 0 && !align_o)
                align_o = v;
            else if (PyUnicode_CompareWithASCIIString(k, "timeout") == 0 && !timeout_o)
                timeout_o = v;
            else {
                PyErr_Format(PyExc_TypeError, "allocate() got an unexpected keyword argument %R",
                             k);
                return nullptr;
            }
        }
    }
    if (!nbytes_o) {
        PyErr_SetString(PyExc_TypeError, "allocate() missing required argument 'nbytes'");
        return nullptr;
    }
    if (!PyLong_Check(nbytes_o) || PyBool_Check(nbytes_o) ||
        (align_o && (!PyLong_Check(align_o) || PyBool_Check(align_o)))) {
        PyErr_SetString(PyExc_TypeError, "nbytes and align must be ints");
        return nullptr;
    }
    Py_ssize_t n = PyLong_AsSsize_t(nbytes_o);
    if (n == -1 && PyErr_Occurred())
        return nullptr;
    Py_ssize_t align = align_o ? PyLong_AsSsize_t(align_o) : 64;
    if (align == -1 && PyErr_Occurred())
        return nullptr;
    if (n <= 0) {
        PyErr_Format(PyExc_ValueError, "a Block needs nbytes >= 1, got %zd", n);
        return nullptr;
    }
    if (align <= 0) {
        PyErr_Format(PyExc_ValueError, "align must be a power of two, got %zd", align);
        return nullptr;
    }
    PyHeap *ph = pyheap_of(self);
    if (!ph) {
        PyErr_SetString(PyExc_TypeError, "allocate() needs a shmipc.Heap");
        return nullptr;
    }
    if (!ph->heap) {
        PyErr_SetString(PyExc_ValueError, "Heap is closed");
        return nullptr;
    }
    std::uint64_t off = 0;
    try {
        // timeout=0 (the default): MemoryError at once when full. > 0 or None: wait for memory
        // another client frees (back-pressure), with the GIL released.
        TimeoutArg t = timeout_o ? timeout_of(timeout_o) : TimeoutArg{0.0};
        if (t.seconds && *t.seconds == 0.0) {
            off = ph->heap->allocate(static_cast<std::size_t>(n), static_cast<std::size_t>(align));
        } else {
            // The deadline bounds the lock waits too: a stopped lock holder is TimeoutError.
            const Deadline dl(t.seconds);
            GilRelease nogil;
            off = ph->heap->allocate_waiting(static_cast<std::size_t>(n),
                                             static_cast<std::size_t>(align), dl);
        }
    } catch (...) {
        return translate();
    }
    PyObject *b = new_block(self, ph, off, n, true);
    if (!b) {
        try {
            ph->heap->deallocate(off);
        } catch (...) {
        }
    }
    return b;
}

PyMethodDef g_allocate_def = {
    "allocate", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(heap_allocate)),
    METH_FASTCALL | METH_KEYWORDS,
    "allocate(nbytes, align=64, timeout=0) -> Block\n\n"
    "A writable Block of nbytes (>= 1) shared-memory bytes, aligned to `align` (a power of two,\n"
    "at most the page size). MemoryError (saying what was asked, what is free and the largest\n"
    "free block) if the heap is full and cannot grow; the heap stays usable. timeout > 0 or\n"
    "None waits (that long, or until memory comes) for another process to free memory first\n"
    "(back-pressure); Ctrl-C ends the wait."};

// --- Block -----------------------------------------------------------------------------

int block_release_memory(BlockObject *b) {
    // Returns -1 with an exception set on failure.
    if (b->released)
        return 0;
    if (b->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "cannot release a Block while %zd view(s) of it (memoryview, ndarray) exist",
                     b->exports);
        return -1;
    }
    b->released = true;
    if (b->on_release || b->keeper)
        run_release_hook(b);
    if (b->owned && b->heap->heap && b->generation == process_generation()) {
        try {
            b->heap->heap->deallocate(b->offset);
        } catch (...) {
            translate();
            return -1;
        }
    }
    return 0;
}

void block_dealloc(PyObject *self) {
    auto *b = reinterpret_cast<BlockObject *>(self);
    if (!b->released && b->owned && b->heap && b->heap->heap &&
        b->generation == process_generation()) {
        try {
            b->heap->heap->deallocate(b->offset);
        } catch (...) {
        }
    }
    if (!b->released && (b->on_release || b->keeper))
        run_release_hook(b);
    Py_CLEAR(b->keeper);
    b->released = true;
    Py_CLEAR(b->owner);
    if (Py_TYPE(self) == g_block_base && g_block_freelist_len < kBlockFreelistMax) {
        g_block_freelist[g_block_freelist_len++] = self;
        return;
    }
    Py_TYPE(self)->tp_free(self);
}

PyObject *block_as_array(PyObject *self, PyObject *args, PyObject *kwargs) {
    if (!g_as_array_helper) {
        PyErr_SetString(PyExc_RuntimeError, "shmipc._heap is not imported");
        return nullptr;
    }
    // as_array(dtype=uint8, shape=None, order="C"): implemented in Python (NumPy).
    PyObject *full = PyTuple_New(PyTuple_GET_SIZE(args) + 1);
    if (!full)
        return nullptr;
    Py_INCREF(self);
    PyTuple_SET_ITEM(full, 0, self);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(args); ++i) {
        PyObject *a = PyTuple_GET_ITEM(args, i);
        Py_INCREF(a);
        PyTuple_SET_ITEM(full, i + 1, a);
    }
    PyObject *r = PyObject_Call(g_as_array_helper, full, kwargs);
    Py_DECREF(full);
    return r;
}

PyObject *block_reduce_ex(PyObject *, PyObject *) {
    PyErr_SetString(PyExc_TypeError,
                    "a shmipc.Block cannot be pickled: send it through a heap channel "
                    "(heap.channel(name).send(blk)) or share a heap.shared_block() by name");
    return nullptr;
}

PyObject *block_release(PyObject *self, PyObject *) {
    if (block_release_memory(reinterpret_cast<BlockObject *>(self)) != 0)
        return nullptr;
    Py_RETURN_NONE;
}

PyObject *block_enter(PyObject *self, PyObject *) {
    auto *b = reinterpret_cast<BlockObject *>(self);
    if (b->released) {
        PyErr_SetString(PyExc_ValueError, "Block is released");
        return nullptr;
    }
    Py_INCREF(self);
    return self;
}

PyObject *block_exit(PyObject *self, PyObject *const *, Py_ssize_t) {
    if (block_release_memory(reinterpret_cast<BlockObject *>(self)) != 0)
        return nullptr;
    Py_RETURN_FALSE;
}

int block_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    auto *b = reinterpret_cast<BlockObject *>(self);
    if (b->released) {
        PyErr_SetString(PyExc_ValueError, "Block is released");
        view->obj = nullptr;
        return -1;
    }
    if (!b->heap->heap) {
        PyErr_SetString(PyExc_ValueError, "Heap is closed");
        view->obj = nullptr;
        return -1;
    }
    if (PyBuffer_FillInfo(view, self, b->ptr, b->nbytes, b->readonly ? 1 : 0, flags) != 0)
        return -1;
    ++b->exports;
    ++b->heap->exports;
    return 0;
}

void block_releasebuffer(PyObject *self, Py_buffer *) {
    auto *b = reinterpret_cast<BlockObject *>(self);
    --b->exports;
    --b->heap->exports;
}

PyObject *block_get_nbytes(PyObject *self, void *) {
    return PyLong_FromSsize_t(reinterpret_cast<BlockObject *>(self)->nbytes);
}
PyObject *block_get_offset(PyObject *self, void *) {
    return PyLong_FromUnsignedLongLong(reinterpret_cast<BlockObject *>(self)->offset);
}
PyObject *block_get_released(PyObject *self, void *) {
    return PyBool_FromLong(reinterpret_cast<BlockObject *>(self)->released);
}
PyObject *block_get_heap(PyObject *self, void *) {
    auto *b = reinterpret_cast<BlockObject *>(self);
    Py_INCREF(b->owner);
    return b->owner;
}
PyObject *block_get_readonly(PyObject *self, void *) {
    return PyBool_FromLong(reinterpret_cast<BlockObject *>(self)->readonly);
}
PyObject *block_get_exports(PyObject *self, void *) {
    return PyLong_FromSsize_t(reinterpret_cast<BlockObject *>(self)->exports);
}
PyObject *block_get_address(PyObject *self, void *) {
    auto *b = reinterpret_cast<BlockObject *>(self);
    return PyLong_FromVoidPtr(b->released ? nullptr : b->ptr);
}

Py_ssize_t block_length(PyObject *self) {
    return reinterpret_cast<BlockObject *>(self)->nbytes;
}

PyObject *block_detach(PyObject *self, PyObject *) {
    try {
        return PyLong_FromUnsignedLongLong(detach_block(self));
    } catch (py::error_already_set &e) {
        e.restore();
        return nullptr;
    } catch (...) {
        return translate();
    }
}

PyObject *block_new(PyTypeObject *, PyObject *, PyObject *) {
    PyErr_SetString(PyExc_TypeError, "Blocks come from Heap.allocate() or Heap.shared_block()");
    return nullptr;
}

PyObject *block_repr(PyObject *self) {
    auto *b = reinterpret_cast<BlockObject *>(self);
    return PyUnicode_FromFormat("<shmipc.Block offset=%llu nbytes=%zd%s>",
                                static_cast<unsigned long long>(b->offset), b->nbytes,
                                b->released ? " released" : "");
}

PyMethodDef g_block_methods[] = {
    {"release", block_release, METH_NOARGS,
     "Frees the block now (idempotent). BufferError while views of it exist."},
    {"__enter__", block_enter, METH_NOARGS, nullptr},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(block_exit)),
     METH_FASTCALL, nullptr},
    {"as_array", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(block_as_array)),
     METH_VARARGS | METH_KEYWORDS,
     "as_array(dtype=numpy.uint8, shape=None, order='C') -> ndarray\n\n"
     "An ndarray view onto the block (zero copy). The array keeps the block alive, and the\n"
     "block cannot be released while the array exists."},
    {"__reduce_ex__", block_reduce_ex, METH_O, nullptr},
    {"_detach", block_detach, METH_NOARGS,
     "Marks the block released without freeing it (ownership moved); returns its offset."},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef g_block_getset[] = {
    {"nbytes", block_get_nbytes, nullptr, "Bytes asked for (the buffer's length).", nullptr},
    {"offset", block_get_offset, nullptr, "Offset of the payload in its heap.", nullptr},
    {"released", block_get_released, nullptr, "True after release().", nullptr},
    {"closed", block_get_released, nullptr, "Same as released.", nullptr},
    {"heap", block_get_heap, nullptr, "The Heap the block belongs to.", nullptr},
    {"readonly", block_get_readonly, nullptr,
     "True for a topic sample: every subscriber shares it, nobody may write it.", nullptr},
    {"_exports", block_get_exports, nullptr, nullptr, nullptr},
    {"_address", block_get_address, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyBufferProcs g_block_buffer = {block_getbuffer, block_releasebuffer};
PySequenceMethods g_block_seq = {};

// Zero until init_block_type(), which gives it the object header of a static type and its slots
// (an aggregate initializer naming only the header would leave ~50 members to
// -Wmissing-field-initializers).
PyTypeObject g_block_type_obj{};

void init_block_type() {
    auto &t = g_block_type_obj;
    // The header as Python's own macro writes it (reference count 1; immortal from 3.12 on).
    const PyVarObject head[] = {PyVarObject_HEAD_INIT(nullptr, 0)};
    t.ob_base = head[0];
    t.tp_name = "shmipc.Block";
    t.tp_basicsize = sizeof(BlockObject);
    t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE;
    t.tp_doc =
        "Bytes of a shared heap: writable buffer protocol, zero copy.\n\n"
        "memoryview(blk), numpy.frombuffer(blk) and blk.as_array() see the shared bytes\n"
        "directly. release() (or leaving a `with` block, or garbage collection) frees them; it\n"
        "raises BufferError while views of the block exist. Attributes: nbytes, offset (the same\n"
        "in every process), released, heap. Blocks come from Heap.allocate() and\n"
        "Heap.shared_block(); a Block of 0 bytes does not exist (ValueError).";
    t.tp_dealloc = block_dealloc;
    t.tp_as_buffer = &g_block_buffer;
    g_block_seq.sq_length = block_length;
    t.tp_as_sequence = &g_block_seq;
    t.tp_methods = g_block_methods;
    t.tp_getset = g_block_getset;
    t.tp_new = block_new;
    t.tp_repr = block_repr;
}

py::dict stats_dict(const HeapStats &s) {
    py::dict d;
    d["size"] = s.size;
    d["used"] = s.used;
    d["free"] = s.free;
    d["largest_free"] = s.largest_free;
    d["segments"] = s.segments;
    d["allocations"] = s.allocations;
    d["cached"] = s.cached;
    d["clients"] = s.clients;
    return d;
}

} // namespace

void add_heap_dependent(py::handle py_heap, void *key, void (*close)(void *key)) {
    PyHeap *ph = pyheap_of(py_heap.ptr());
    if (!ph)
        throw InvalidArgument("not a shmipc.Heap");
    ph->dependents.emplace_back(key, close);
}

void remove_heap_dependent(py::handle py_heap, void *key) noexcept {
    PyHeap *ph = pyheap_of(py_heap.ptr());
    if (!ph)
        return;
    auto &d = ph->dependents;
    for (auto it = d.begin(); it != d.end(); ++it) {
        if (it->first == key) {
            d.erase(it);
            return;
        }
    }
}

Heap &heap_of(py::handle py_heap) {
    PyHeap *ph = pyheap_of(py_heap.ptr());
    if (!ph)
        throw InvalidArgument("not a shmipc.Heap");
    return ph->get();
}

py::object make_block(py::handle py_heap, std::uint64_t offset, std::size_t nbytes, bool owned) {
    PyHeap *ph = pyheap_of(py_heap.ptr());
    if (!ph)
        throw InvalidArgument("not a shmipc.Heap");
    // Only a live block of this heap, and only its payload: a view can never cover allocator
    // metadata (InvalidArgument otherwise).
    if (ph->get().block_capacity(offset) < nbytes)
        throw InvalidArgument("block at offset " + std::to_string(offset) + " is smaller than " +
                              std::to_string(nbytes) + " bytes");
    PyObject *o = new_block(py_heap.ptr(), ph, offset, static_cast<Py_ssize_t>(nbytes), owned);
    if (!o)
        throw py::error_already_set();
    return py::reinterpret_steal<py::object>(o);
}

py::object make_sample_block(py::handle py_heap, std::uint64_t offset, std::size_t nbytes,
                             BlockReleaseHook on_release, py::handle keeper, std::uint64_t a,
                             std::uint64_t b) {
    PyHeap *ph = pyheap_of(py_heap.ptr());
    if (!ph)
        throw InvalidArgument("not a shmipc.Heap");
    if (ph->get().block_capacity(offset) < nbytes)
        throw InvalidArgument("block at offset " + std::to_string(offset) + " is smaller than " +
                              std::to_string(nbytes) + " bytes");
    PyObject *o = new_block(py_heap.ptr(), ph, offset, static_cast<Py_ssize_t>(nbytes), false);
    if (!o)
        throw py::error_already_set();
    auto *blk = reinterpret_cast<BlockObject *>(o);
    blk->readonly = true;
    blk->on_release = on_release;
    blk->keeper = Py_NewRef(keeper.ptr());
    blk->cookie_a = a;
    blk->cookie_b = b;
    return py::reinterpret_steal<py::object>(o);
}

std::optional<BlockRef> block_ref(py::handle obj) {
    if (!is_block(obj.ptr()))
        return std::nullopt;
    auto *b = reinterpret_cast<BlockObject *>(obj.ptr());
    if (b->released || !b->heap->heap)
        return std::nullopt;
    return BlockRef{b->owner, b->offset, static_cast<std::size_t>(b->nbytes), b->owned};
}

std::uint64_t detach_block(py::handle blk) {
    return detach_block(blk, false);
}

std::uint64_t detach_block(py::handle blk, bool allow_exports) {
    if (!is_block(blk.ptr()))
        throw InvalidArgument("not a shmipc.Block");
    auto *b = reinterpret_cast<BlockObject *>(blk.ptr());
    if (b->released)
        throw InvalidArgument("Block is released");
    if (!b->owned)
        throw InvalidArgument("a shared block cannot be moved");
    if (!b->heap->heap)
        throw Closed("Heap is closed");
    if (b->exports > 0 && !allow_exports)
        throw BufferBusy("cannot move a Block while " + std::to_string(b->exports) +
                         " view(s) of it exist");
    b->released = true;
    return b->offset;
}

namespace {

HeapOptions heap_options(std::size_t size, std::size_t max_size, bool thread_cache) {
    HeapOptions o;
    o.size = size;
    o.max_size = max_size;
    o.thread_cache = thread_cache;
    return o;
}

// Opens the empty handle `h` with `make` (the GIL released: it may wait for a creator).
template <class Make> void open_with(PyHeap &h, Make &&make) {
    if (h.heap)
        throw UsageError("this heap handle is already open");
    std::unique_ptr<Heap> heap;
    {
        GilRelease nogil;
        heap = make();
    }
    h.heap = std::move(heap);
}

} // namespace

void bind_heap(py::module_ &m) {
    init_block_type();
    if (PyType_Ready(&g_block_type_obj) < 0)
        throw py::error_already_set();
    Py_INCREF(&g_block_type_obj);
    m.add_object("Block", reinterpret_cast<PyObject *>(&g_block_type_obj));
    g_block_base = &g_block_type_obj;
    g_block_type = &g_block_type_obj;

    m.def("_set_block_helpers", [](py::object as_array) {
        as_array.inc_ref(); // kept for the life of the process
        g_as_array_helper = as_array.ptr();
    });
    m.def("_set_block_type", [](py::object t) {
        if (!PyType_Check(t.ptr()) ||
            !PyType_IsSubtype(reinterpret_cast<PyTypeObject *>(t.ptr()), g_block_base) ||
            reinterpret_cast<PyTypeObject *>(t.ptr())->tp_basicsize != sizeof(BlockObject))
            throw InvalidArgument("not a slot-less subclass of _core.Block");
        t.inc_ref(); // kept for the life of the process
        g_block_type = reinterpret_cast<PyTypeObject *>(t.ptr());
    });

    py::class_<PyHeap> cls(m, "HeapCore");
    // An empty (closed) handle, opened by one of the factories below: which one is the
    // Python layer's choice (Heap.create / attach / anonymous / multiprocessing, _heap.py).
    cls.def(py::init([] { return std::make_unique<PyHeap>(); }))
        .def(
            "_open_create",
            [](PyHeap &h, const std::string &name, std::size_t size, std::size_t max_size,
               unsigned mode, bool persistent, bool thread_cache) {
                HeapOptions o = heap_options(size, max_size, thread_cache);
                o.mode = static_cast<mode_t>(mode);
                o.persistent = persistent;
                open_with(h, [&] { return Heap::create(name, o); });
            },
            py::arg("name"), py::arg("size"), py::arg("max_size"), py::arg("mode"),
            py::arg("persistent"), py::arg("thread_cache"))
        .def(
            "_open_attach",
            [](PyHeap &h, const std::string &name, bool thread_cache, std::uint32_t trust_uid) {
                open_with(h, [&] {
                    return Heap::attach(name, thread_cache,
                                        TrustPolicy{static_cast<uid_t>(trust_uid)});
                });
            },
            py::arg("name"), py::arg("thread_cache"), py::arg("trust_uid"))
        .def(
            "_open_anonymous",
            [](PyHeap &h, std::size_t size, bool thread_cache) {
                HeapOptions o = heap_options(size, 0, thread_cache);
                open_with(h, [&] { return Heap::anonymous(o); });
            },
            py::arg("size"), py::arg("thread_cache"))
        .def(
            "_open_fd",
            [](PyHeap &h, int fd, bool thread_cache) {
                open_with(h, [&] { return Heap::from_fd(UniqueFd(fd), thread_cache); });
            },
            py::arg("fd"), py::arg("thread_cache"))
        .def_property_readonly("closed", [](const PyHeap &h) { return !h.heap; })
        .def_property_readonly("_exports", [](const PyHeap &h) { return h.exports; })
        .def("_close",
             [](PyHeap &h) {
                 if (!h.heap)
                     return;
                 if (h.exports > 0)
                     throw BufferBusy("cannot close the heap while " + std::to_string(h.exports) +
                                      " view(s) of its Blocks exist");
                 // Its channels first: a thread blocked in one leaves with ClosedError, and
                 // their roles in this process are released.
                 while (!h.dependents.empty() && h.heap) {
                     auto [key, close] = h.dependents.back();
                     close(key); // unregisters itself
                     if (!h.dependents.empty() && h.dependents.back().first == key)
                         h.dependents.pop_back(); // a closer that failed to: never loop
                 }
                 if (!h.heap)
                     return; // closed meanwhile by another thread
                 std::unique_ptr<Heap> hp = std::move(h.heap);
                 GilRelease nogil;
                 hp.reset();
             })
        .def("_name", [](PyHeap &h) { return h.get().name(); })
        .def("_anonymous", [](PyHeap &h) { return h.get().anonymous(); })
        .def("_fileno", [](PyHeap &h) { return h.get().fd(); })
        .def("_max_size", [](PyHeap &h) { return h.get().max_size(); })
        .def("_client_id", [](PyHeap &h) { return h.get().client_id(); })
        .def("_stats",
             [](PyHeap &h) {
                 Heap &hp = h.get();
                 HeapStats s;
                 {
                     GilRelease nogil;
                     s = hp.stats();
                 }
                 return stats_dict(s);
             })
        .def("_check_invariants",
             [](PyHeap &h) {
                 Heap &hp = h.get();
                 GilRelease nogil;
                 hp.check_invariants();
             })
        .def("_flush_caches",
             [](PyHeap &h) {
                 // Every thread's cache: Python threads only allocate/free with the GIL held,
                 // and we keep it, so none of them is inside the allocator now.
                 h.get().flush_thread_caches(true);
             })
        .def("_reap",
             [](PyHeap &h) {
                 Heap &hp = h.get();
                 GilRelease nogil;
                 return hp.reap_dead_clients();
             })
        .def("_all_freed",
             [](PyHeap &h) {
                 Heap &hp = h.get();
                 GilRelease nogil;
                 return hp.all_freed();
             })
        .def("_lock_for_crash_test",
             [](PyHeap &h) {
                 // Test hook: takes the heap's lock and never gives it back, so a test can
                 // SIGKILL a process "inside the allocator".
                 h.get().hold_lock_for_tests();
             })
        .def("_adopt", [](py::object self, std::uint64_t offset,
                          std::size_t nbytes) { return make_block(self, offset, nbytes, true); })
        // Out-of-band buffers of pickled objects (shmipc/_objects.py): a block that travels in
        // a message is held by the heap while in flight (it survives its sender), and taken back
        // by exactly one receiver (then reclaimed if that receiver dies).
        .def(
            "_hold_block",
            [](py::object self, py::handle blk, bool allow_exports) {
                // allow_exports: the caller made the one remaining view read-only (a move).
                Heap &hp = heap_of(self);
                const std::uint64_t off = detach_block(blk, allow_exports);
                hp.transfer(off, kOwnerHeld);
                return off;
            },
            py::arg("blk"), py::arg("allow_exports") = false)
        .def("_take_held",
             [](py::object self, std::uint64_t offset, std::size_t nbytes) {
                 Heap &hp = heap_of(self);
                 if (hp.block_capacity(offset) < nbytes)
                     throw CorruptSegment("block at offset " + std::to_string(offset) +
                                          " is smaller than " + std::to_string(nbytes) + " bytes");
                 if (!hp.try_transfer(offset, kOwnerHeld, hp.client_id()))
                     throw CorruptSegment("block at offset " + std::to_string(offset) +
                                          " is not held for a message (taken twice?)");
                 return make_block(self, offset, nbytes, true);
             })
        .def("_remove_named",
             [](PyHeap &h, const std::string &name) {
                 Heap &hp = h.get();
                 GilRelease nogil;
                 return hp.remove_named(name);
             })
        .def(
            "_named",
            [](PyHeap &h, std::uint32_t kind) {
                py::list out;
                for (auto &e : h.get().list_named(kind))
                    out.append(py::make_tuple(e.name, e.kind, e.offset, e.nbytes));
                return out;
            },
            py::arg("kind") = 0)
        .def(
            "_shared_block",
            [](py::object self, const std::string &name, std::int64_t nbytes, py::object init,
               TimeoutArg timeout) {
                if (nbytes <= 0)
                    throw InvalidArgument("a shared block needs nbytes >= 1, got " +
                                          std::to_string(nbytes));
                Heap &hp = heap_of(self);
                std::pair<std::uint64_t, bool> r;
                {
                    GilRelease nogil;
                    r = hp.find_or_create_named(
                        name, static_cast<std::size_t>(nbytes),
                        [&](void *p) {
                            if (init.is_none())
                                return;
                            park_if_finalizing();
                            py::gil_scoped_acquire gil;
                            py::object blk = make_block(self, hp.to_offset(p),
                                                        static_cast<std::size_t>(nbytes), false);
                            init(blk);
                        },
                        kNamedBlock, timeout);
                }
                return make_block(self, r.first, static_cast<std::size_t>(nbytes), false);
            },
            py::arg("name"), py::arg("nbytes"), py::arg("init") = py::none(),
            py::arg("timeout") = 10.0);

    g_heap_type = reinterpret_cast<PyTypeObject *>(cls.ptr());
    PyObject *descr = PyDescr_NewMethod(g_heap_type, &g_allocate_def);
    if (!descr)
        throw py::error_already_set();
    int rc = PyObject_SetAttrString(cls.ptr(), "allocate", descr);
    Py_DECREF(descr);
    if (rc != 0)
        throw py::error_already_set();

    m.attr("HEAP_NAMED_BLOCK") = kNamedBlock;
    m.attr("HEAP_NAMED_CHANNEL") = kNamedChannel;
    m.attr("HEAP_NAMED_TOPIC") = kNamedTopic;
}

} // namespace shmipc::bindings
