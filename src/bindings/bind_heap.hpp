// What other bindings (channels) need from shmipc.Heap and shmipc.Block objects.
#pragma once

#include "bindings.hpp"

#include "ipc_core/heap/heap.hpp"

#include <cstdint>
#include <optional>

namespace shmipc::bindings {

// The C++ heap behind a Python shmipc.Heap (a _core.HeapCore). Throws Closed ("Heap is
// closed") after close(), InvalidArgument if `py_heap` is not a heap.
Heap &heap_of(py::handle py_heap);

// A new Block of `py_heap` over an allocated payload of >= nbytes. `owned`: release()/GC frees
// it (the block must be owned by this process's client: transfer() it first if it came from a
// channel). Not owned: a view of a named/shared block, release() only forgets it.
py::object make_block(py::handle py_heap, std::uint64_t offset, std::size_t nbytes,
                      bool owned = true);

// Objects living in a Python heap that must end before it does (channels: a thread may be
// blocked in one, and each holds a role registered for this process). heap.close() runs every
// registered closer first (with the GIL held; a closer may release it), so no thread is left
// inside an object whose heap is gone. A closer unregisters itself.
void add_heap_dependent(py::handle py_heap, void *key, void (*close)(void *key));
void remove_heap_dependent(py::handle py_heap, void *key) noexcept;

// Called when a sample Block is released or collected (GIL held, in the receiving process):
// gives the reference (a, b) back to `keeper`. Must not throw or raise.
using BlockReleaseHook = void (*)(PyObject *keeper, std::uint64_t a, std::uint64_t b) noexcept;
// A read-only, not-owned Block over a shared sample whose release calls `on_release`.
py::object make_sample_block(py::handle py_heap, std::uint64_t offset, std::size_t nbytes,
                             BlockReleaseHook on_release, py::handle keeper, std::uint64_t a,
                             std::uint64_t b);

struct BlockRef {
    PyObject *heap;       // borrowed: the Python heap the block belongs to
    std::uint64_t offset; // payload offset in the heap
    std::size_t nbytes;
    bool owned; // release() would free it
};
// If `obj` is a live (not released) Block: where it is. nullopt for any other object.
std::optional<BlockRef> block_ref(py::handle obj);

// Marks a live owned Block released WITHOUT freeing its memory (its ownership moves elsewhere,
// e.g. into a channel) and returns its offset. BufferError while views of it exist; ValueError
// if it is released or not owned.
std::uint64_t detach_block(py::handle blk);
// Same, but with allow_exports=true it also moves a Block whose views still exist (the caller,
// the channel's send_array, makes the sender's array read-only: the memory is the receiver's
// now). The views stay valid memory; their release later is harmless. [added by the channel
// module]
std::uint64_t detach_block(py::handle blk, bool allow_exports);

} // namespace shmipc::bindings
