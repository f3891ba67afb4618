#include "ipc_core/containers/stl_allocator.hpp"

#include "ipc_core/base/errors.hpp"

#include <cassert>
#include <mutex>

namespace shmipc {
namespace {

struct Registered {
    const std::byte *base; // start of the primary mapping in this process
    Heap *heap;
    int refs;
};

// Per process: few heaps at once, so a vector under a mutex is plenty (an allocation already
// costs more than this lookup).
std::mutex g_mu;
std::vector<Registered> g_heaps;

} // namespace

HeapRegistration::HeapRegistration(Heap &heap) : heap_(&heap) {
    std::lock_guard g(g_mu);
    for (auto &r : g_heaps) {
        if (r.base == heap.base()) {
            if (r.heap != &heap)
                throw UsageError("another Heap handle is registered for this mapping");
            ++r.refs;
            return;
        }
    }
    g_heaps.push_back({heap.base(), &heap, 1});
}

HeapRegistration::~HeapRegistration() {
    std::lock_guard g(g_mu);
    for (auto it = g_heaps.begin(); it != g_heaps.end(); ++it) {
        if (it->heap == heap_) {
            if (--it->refs == 0)
                g_heaps.erase(it);
            return;
        }
    }
}

namespace detail {

Heap *registered_heap(const std::byte *base) noexcept {
    std::lock_guard g(g_mu);
    for (auto &r : g_heaps)
        if (r.base == base)
            return r.heap;
    return nullptr;
}

void *heap_allocate(const std::byte *base, std::size_t bytes, std::size_t align) {
    if (!base)
        throw UsageError("shmipc::allocator is not bound to a heap");
    Heap *h = registered_heap(base);
    if (!h)
        throw UsageError("shmipc::allocator: this process has no HeapRegistration for the "
                         "heap (create one before allocating)");
    std::uint64_t off = 0;
    try {
        // Held by the heap: the container outlives the process that grew it.
        off = h->allocate_owned(bytes, std::max<std::size_t>(align, 1), kOwnerHeld);
    } catch (const OutOfMemory &e) {
        throw heap_bad_alloc(e.what());
    }
    if ((off >> kSegmentShift) != 0) {
        // Self-relative pointers cannot cross segments (see the header): give it back.
        h->deallocate(off);
        throw heap_bad_alloc("cannot allocate " + std::to_string(bytes) +
                             " bytes for a container: the heap's primary segment is full "
                             "(containers do not use the segments a heap grows)");
    }
    return h->to_ptr(off);
}

void heap_deallocate(const std::byte *base, void *p) noexcept {
    Heap *h = registered_heap(base);
    // No registration: a programming error; the block stays held by the heap (a leak, never
    // corruption), which is the only thing a noexcept deallocate can do.
    assert(h && "shmipc::allocator: deallocate without a HeapRegistration");
    if (!h)
        return;
    try {
        h->deallocate(static_cast<std::uint64_t>(static_cast<std::byte *>(p) - base));
    } catch (...) {
        assert(false && "shmipc::allocator: deallocate of a pointer that is not a live block");
    }
}

} // namespace detail
} // namespace shmipc
