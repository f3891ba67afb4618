// shmipc::allocator<T>: an STL allocator over a shared Heap, so standard containers can live in
// shared memory and be used by every process that maps the heap, at whatever address.
//
//   shmipc::HeapRegistration reg(heap);            // this process may allocate from `heap`
//   auto [off, created] = heap.find_or_create_named("squares", sizeof(shmipc::vector<int>),
//       [&](void* p) { new (p) shmipc::vector<int>(shmipc::allocator<int>(heap)); });
//   auto& v = *static_cast<shmipc::vector<int>*>(heap.to_ptr(off));
//   v.push_back(4);                                 // the elements are in the heap too
//
// How it stays address independent:
//  - pointers are shmipc::offset_ptr (self-relative), so a container, its elements and the
//    pointers between them agree in every process as long as they are all in one mapping.
//    That is why the allocator only hands out blocks of the heap's PRIMARY segment (the one
//    created with the heap's `size`): a block a grown heap places in an extension segment is
//    refused (std::bad_alloc), because that segment sits at a different distance from the
//    primary one in each process.
//  - the allocator itself holds an offset_ptr to the heap's base (it lives inside the
//    container, in the heap); to allocate, it finds this process's Heap handle for that base in
//    a per-process registry (HeapRegistration). Reading a container needs no registration.
//  - blocks are owned by the heap (kOwnerHeld), not by the allocating process: a container
//    outlives the process that grew it.
//
// What works with libstdc++ (g++ 12), checked by tests/cpp/test_stl_allocator.cpp:
//  - std::vector<T, shmipc::allocator<T>> and std::basic_string<C, Tr, shmipc::allocator<C>>
//    store allocator_traits::pointer (our offset_ptr) and are address independent.
//  - std::map, std::set, std::multimap, std::list, std::unordered_map ACCEPT the allocator but
//    libstdc++ 12 links their nodes with raw pointers (_Rb_tree_node_base*, _List_node_base*,
//    hash-node pointers), only converting the allocator's pointer at allocate/deallocate. Such a
//    container is correct only in processes that map the heap at the same address, so do not
//    put one in a heap. Use shmipc::flat_map / shmipc::flat_set (sorted shmipc::vector, the
//    std::map / std::set interface for lookup, insertion, erasure and ordered iteration).
//
// What works with libc++ (clang++ -stdlib=libc++, checked with libc++ 16 by
// tests/cpp/libcxx/test_libcxx_containers.cpp): libc++ links nodes with the allocator's pointer,
// so std::map, std::multimap, std::set, std::list, std::forward_list, std::deque,
// std::unordered_map / unordered_set and std::vector are address independent. NOT
// std::basic_string (shmipc::string does not compile): libc++ keeps the string's pointer in a
// union it copies whole, which needs a trivially copyable pointer, and a self-relative one
// cannot be. Use shmipc::vector<char> for string data there.
//
// Errors: a heap that is full throws shmipc::heap_bad_alloc (a std::bad_alloc whose what() says
// how much was asked and what is free); the heap and the container stay usable.
#pragma once

#include "ipc_core/containers/offset_ptr.hpp"
#include "ipc_core/heap/heap.hpp"

#include <algorithm>
#include <cstddef>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace shmipc {

// std::bad_alloc with a message (OutOfMemory of the heap, or a block outside the primary segment).
class heap_bad_alloc : public std::bad_alloc { // NOLINT: std naming on purpose
  public:
    explicit heap_bad_alloc(const std::string &what) : what_(what) {}
    [[nodiscard]] const char *what() const noexcept override { return what_.what(); }

  private:
    std::runtime_error what_; // refcounted string: copying an exception must not throw
};

// Makes `heap` usable by shmipc::allocator in this process while it exists (nestable: the heap
// stays registered until the last registration of it goes away). Destroy it before the Heap.
class HeapRegistration {
  public:
    explicit HeapRegistration(Heap &heap);
    ~HeapRegistration();
    HeapRegistration(const HeapRegistration &) = delete;
    HeapRegistration &operator=(const HeapRegistration &) = delete;

  private:
    Heap *heap_;
};

namespace detail {
// This process's registered Heap whose primary mapping starts at `base`, or nullptr.
Heap *registered_heap(const std::byte *base) noexcept;
// The raw work of allocator<T>: a block of `bytes` aligned to `align` in the primary segment.
void *heap_allocate(const std::byte *base, std::size_t bytes, std::size_t align);
void heap_deallocate(const std::byte *base, void *p) noexcept;
} // namespace detail

template <class T> class allocator { // NOLINT: std naming on purpose
    template <class U> friend class allocator;

  public:
    using value_type = T;
    using pointer = offset_ptr<T>;
    using const_pointer = offset_ptr<const T>;
    using void_pointer = offset_ptr<void>;
    using const_void_pointer = offset_ptr<const void>;
    using size_type = std::size_t;
    using difference_type = std::ptrdiff_t;
    // The heap travels with the contents: copy/move/swap of containers keep it.
    using propagate_on_container_copy_assignment = std::true_type;
    using propagate_on_container_move_assignment = std::true_type;
    using propagate_on_container_swap = std::true_type;
    using is_always_equal = std::false_type;
    template <class U> struct rebind {
        using other = allocator<U>;
    };

    allocator() noexcept = default; // bound to no heap: allocate() throws UsageError
    explicit allocator(Heap &heap) noexcept : base_(heap.base()) {}
    allocator(const allocator &o) noexcept : base_(o.base_) {}
    template <class U> allocator(const allocator<U> &o) noexcept : base_(o.base_) {} // NOLINT
    allocator &operator=(const allocator &o) noexcept {
        base_ = o.base_;
        return *this;
    }

    [[nodiscard]] pointer allocate(std::size_t n) {
        if (n > max_size())
            throw std::bad_array_new_length();
        return pointer(static_cast<T *>(detail::heap_allocate(
            base_.get(), std::max<std::size_t>(1, n * sizeof(T)), alignof(T))));
    }
    void deallocate(pointer p, std::size_t /*n*/) noexcept {
        if (p)
            detail::heap_deallocate(base_.get(), p.get());
    }
    [[nodiscard]] static constexpr std::size_t max_size() noexcept {
        return (std::size_t{1} << 39) / sizeof(T); // the heap's per-block limit (512 GiB)
    }
    // Uses-allocator construction: a shmipc::string element of a shmipc::vector gets this heap's
    // allocator too, so nested containers live in the heap without spelling the allocator.
    template <class U, class... Args> void construct(U *p, Args &&...args) {
        std::uninitialized_construct_using_allocator(p, *this, std::forward<Args>(args)...);
    }
    template <class U> void destroy(U *p) noexcept { p->~U(); }

    // Start of the heap's primary mapping in this process (nullptr if unbound).
    [[nodiscard]] std::byte *base() const noexcept { return base_.get(); }

    template <class U> friend bool operator==(const allocator &a, const allocator<U> &b) noexcept {
        return a.base_.get() == b.base_.get();
    }

  private:
    offset_ptr<std::byte> base_;
};

// --- Containers that are address independent with libstdc++ ----------------------------------

// The default order of flat_map/flat_set: `<`, except that anything viewable as a string_view
// compares as one, so a shmipc::string key is found with a std::string, a string_view or a
// literal (basic_strings with different allocators have no operator< between them).
struct transparent_less {
    using is_transparent = void;
    template <class A, class B> bool operator()(const A &a, const B &b) const {
        if constexpr (std::is_convertible_v<const A &, std::string_view> &&
                      std::is_convertible_v<const B &, std::string_view>)
            return std::string_view(a) < std::string_view(b);
        else
            return a < b;
    }
};

template <class T> using vector = std::vector<T, allocator<T>>;
template <class C, class Tr = std::char_traits<C>>
using basic_string = std::basic_string<C, Tr, allocator<C>>;
using string = basic_string<char>;

// A sorted vector with the std::map interface that matters (see the header comment for why not
// std::map). Iterators and references are invalidated by insertion and erasure, like a vector's.
template <class Key, class T, class Compare = transparent_less> class flat_map {
  public:
    using key_type = Key;
    using mapped_type = T;
    using value_type = std::pair<Key, T>; // not pair<const Key, T>: elements are moved around
    using allocator_type = allocator<value_type>;
    using container_type = std::vector<value_type, allocator_type>;
    using iterator = typename container_type::iterator;
    using const_iterator = typename container_type::const_iterator;
    using size_type = std::size_t;

    explicit flat_map(const allocator_type &a, Compare c = Compare()) : v_(a), cmp_(c) {}
    flat_map(const flat_map &) = default;
    flat_map(flat_map &&) noexcept = default;
    flat_map &operator=(const flat_map &) = default;
    flat_map &operator=(flat_map &&) noexcept = default;

    [[nodiscard]] allocator_type get_allocator() const { return v_.get_allocator(); }
    [[nodiscard]] iterator begin() noexcept { return v_.begin(); }
    [[nodiscard]] iterator end() noexcept { return v_.end(); }
    [[nodiscard]] const_iterator begin() const noexcept { return v_.begin(); }
    [[nodiscard]] const_iterator end() const noexcept { return v_.end(); }
    [[nodiscard]] size_type size() const noexcept { return v_.size(); }
    [[nodiscard]] bool empty() const noexcept { return v_.empty(); }
    void clear() noexcept { v_.clear(); }
    void reserve(size_type n) { v_.reserve(n); }

    template <class K> [[nodiscard]] iterator lower_bound(const K &k) {
        return std::lower_bound(v_.begin(), v_.end(), k,
                                [&](const value_type &e, const K &x) { return cmp_(e.first, x); });
    }
    template <class K> [[nodiscard]] const_iterator lower_bound(const K &k) const {
        return std::lower_bound(v_.begin(), v_.end(), k,
                                [&](const value_type &e, const K &x) { return cmp_(e.first, x); });
    }
    template <class K> [[nodiscard]] iterator find(const K &k) {
        auto it = lower_bound(k);
        return it != v_.end() && !cmp_(k, it->first) ? it : v_.end();
    }
    template <class K> [[nodiscard]] const_iterator find(const K &k) const {
        auto it = lower_bound(k);
        return it != v_.end() && !cmp_(k, it->first) ? it : v_.end();
    }
    template <class K> [[nodiscard]] bool contains(const K &k) const { return find(k) != end(); }
    template <class K> [[nodiscard]] size_type count(const K &k) const { return contains(k); }
    template <class K> T &at(const K &k) {
        auto it = find(k);
        if (it == v_.end())
            throw std::out_of_range("shmipc::flat_map::at: no such key");
        return it->second;
    }
    template <class K> const T &at(const K &k) const {
        auto it = find(k);
        if (it == v_.end())
            throw std::out_of_range("shmipc::flat_map::at: no such key");
        return it->second;
    }
    // The key is converted to Key with this heap's allocator (uses-allocator construction).
    template <class K, class... Args> std::pair<iterator, bool> try_emplace(K &&k, Args &&...a) {
        auto it = lower_bound(k);
        if (it != v_.end() && !cmp_(k, it->first))
            return {it, false};
        it = v_.emplace(it, std::piecewise_construct, std::forward_as_tuple(std::forward<K>(k)),
                        std::forward_as_tuple(std::forward<Args>(a)...));
        return {it, true};
    }
    template <class K, class M> std::pair<iterator, bool> insert_or_assign(K &&k, M &&m) {
        auto [it, inserted] = try_emplace(std::forward<K>(k), std::forward<M>(m));
        if (!inserted)
            it->second = std::forward<M>(m);
        return {it, inserted};
    }
    std::pair<iterator, bool> insert(const value_type &kv) {
        return try_emplace(kv.first, kv.second);
    }
    template <class K> T &operator[](K &&k) {
        return try_emplace(std::forward<K>(k)).first->second;
    }
    template <class K> size_type erase(const K &k) {
        auto it = find(k);
        if (it == v_.end())
            return 0;
        v_.erase(it);
        return 1;
    }
    iterator erase(const_iterator pos) { return v_.erase(pos); }

  private:
    container_type v_;
    [[no_unique_address]] Compare cmp_;
};

// A sorted vector with the std::set interface that matters.
template <class Key, class Compare = transparent_less> class flat_set {
  public:
    using key_type = Key;
    using value_type = Key;
    using allocator_type = allocator<Key>;
    using container_type = std::vector<Key, allocator_type>;
    using iterator = typename container_type::const_iterator; // keys are not modifiable in place
    using const_iterator = typename container_type::const_iterator;
    using size_type = std::size_t;

    explicit flat_set(const allocator_type &a, Compare c = Compare()) : v_(a), cmp_(c) {}

    [[nodiscard]] allocator_type get_allocator() const { return v_.get_allocator(); }
    [[nodiscard]] const_iterator begin() const noexcept { return v_.begin(); }
    [[nodiscard]] const_iterator end() const noexcept { return v_.end(); }
    [[nodiscard]] size_type size() const noexcept { return v_.size(); }
    [[nodiscard]] bool empty() const noexcept { return v_.empty(); }
    void clear() noexcept { v_.clear(); }

    template <class K> [[nodiscard]] const_iterator lower_bound(const K &k) const {
        return std::lower_bound(v_.begin(), v_.end(), k,
                                [&](const Key &e, const K &x) { return cmp_(e, x); });
    }
    template <class K> [[nodiscard]] const_iterator find(const K &k) const {
        auto it = lower_bound(k);
        return it != v_.end() && !cmp_(k, *it) ? it : v_.end();
    }
    template <class K> [[nodiscard]] bool contains(const K &k) const { return find(k) != end(); }
    template <class K> [[nodiscard]] size_type count(const K &k) const { return contains(k); }
    template <class K> std::pair<const_iterator, bool> insert(K &&k) {
        auto it = lower_bound(k);
        if (it != v_.end() && !cmp_(k, *it))
            return {it, false};
        return {v_.emplace(it, std::forward<K>(k)), true};
    }
    template <class K> size_type erase(const K &k) {
        auto it = find(k);
        if (it == v_.end())
            return 0;
        v_.erase(it);
        return 1;
    }

  private:
    container_type v_;
    [[no_unique_address]] Compare cmp_;
};

} // namespace shmipc
