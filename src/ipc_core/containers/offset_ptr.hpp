// shmipc::offset_ptr<T>: a pointer that stays valid when the memory holding it is mapped at a
// different address in another process.
//
// It stores the distance from its own address to the target (self-relative), so a pointer and
// its target that live in the SAME mapping agree in every process, whatever address that
// mapping got. A pointer into a different mapping (another segment, the stack, the process
// heap) is only meaningful in the process that stored it: keep both ends in one mapping.
//
// Null is the distance 1 (a pointer to the next byte of itself, which no T can be, since an
// offset_ptr is not a T and at least one byte long); the distance 0 (pointing at itself) is a
// valid target, e.g. a node whose first member points back at the node.
//
// It satisfies what std::allocator_traits and the standard containers expect of a fancy
// pointer: NullablePointer (default/nullptr construction, ==, explicit bool), a contiguous
// random access iterator for object types, pointer_traits (element_type, rebind, pointer_to),
// implicit conversion to offset_ptr<const T> / offset_ptr<void> / offset_ptr<const void> and
// static_cast back from a void pointer or from a base class pointer (libc++'s node containers
// cast a node-base pointer to a node pointer). Copies re-encode the distance (that is why the
// copy constructor is not trivial), so copying one from shared memory to the stack works; it
// is also why libc++'s std::basic_string, which needs a trivially copyable pointer, cannot use it.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <type_traits>

namespace shmipc {

template <class T> class offset_ptr {
    template <class U> friend class offset_ptr;

  public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;
    using difference_type = std::ptrdiff_t;
    using pointer = offset_ptr; // what iterator_traits::pointer (and so it->x) goes through
    using reference = std::add_lvalue_reference_t<T>; // void& is `void`: no operator* then
    using iterator_category = std::random_access_iterator_tag;
    using iterator_concept = std::contiguous_iterator_tag;
    template <class U> using rebind = offset_ptr<U>;

    // --- construction (every one encodes relative to `this`) ---------------------------------
    offset_ptr() noexcept = default; // null
    // Also the construction from nullptr and from a literal 0 (no separate nullptr_t overload:
    // it would make `cond ? 0 : p`, in libc++'s deque, ambiguous).
    offset_ptr(T *p) noexcept { set(p); } // NOLINT: implicit, like a raw pointer
    offset_ptr(const offset_ptr &o) noexcept { set(o.get()); }
    // T* -> const T*, Derived* -> Base*, T* -> void*: implicit when the raw pointers are.
    template <class U, std::enable_if_t<std::is_convertible_v<U *, T *>, int> = 0>
    offset_ptr(const offset_ptr<U> &o) noexcept { // NOLINT
        set(o.get());
    }
    // void* -> T* and Base* -> Derived*: explicit, as static_cast of the raw pointers (libc++'s
    // node containers static_cast a node-base pointer to a node pointer).
    template <class U>
        requires(!std::is_convertible_v<U *, T *> && requires(U *u) { static_cast<T *>(u); })
    explicit offset_ptr(const offset_ptr<U> &o) noexcept {
        set(static_cast<T *>(o.get()));
    }
    offset_ptr &operator=(const offset_ptr &o) noexcept {
        set(o.get());
        return *this;
    }
    offset_ptr &operator=(T *p) noexcept {
        set(p);
        return *this;
    }
    offset_ptr &operator=(std::nullptr_t) noexcept {
        diff_ = kNull;
        return *this;
    }

    // --- access ------------------------------------------------------------------------------
    [[nodiscard]] T *get() const noexcept {
        if (diff_ == kNull)
            return nullptr;
        // Integer arithmetic on purpose: the target need not be in the same C++ object.
        return reinterpret_cast<T *>(reinterpret_cast<std::uintptr_t>(this) +
                                     static_cast<std::uintptr_t>(diff_));
    }
    explicit operator bool() const noexcept { return diff_ != kNull; }
    // libstdc++ 12's basic_string returns its `pointer` as a `C*` (data(), c_str()), so the
    // conversion to a raw pointer has to be implicit, as it is for Boost.Interprocess's.
    operator T *() const noexcept { return get(); } // NOLINT
    T *operator->() const noexcept { return get(); }
    template <class U = T, std::enable_if_t<!std::is_void_v<U>, int> = 0>
    U &operator*() const noexcept {
        return *get();
    }
    template <class U = T, std::enable_if_t<!std::is_void_v<U>, int> = 0>
    U &operator[](difference_type i) const noexcept {
        return get()[i];
    }
    // pointer_traits<offset_ptr<T>>::pointer_to (used by basic_string for its local buffer).
    template <class U = T, std::enable_if_t<!std::is_void_v<U>, int> = 0>
    static offset_ptr pointer_to(U &r) noexcept {
        return offset_ptr(std::addressof(r));
    }

    // --- random access iterator -----------------------------------------------------------------
    offset_ptr &operator+=(difference_type n) noexcept {
        set(get() + n);
        return *this;
    }
    offset_ptr &operator-=(difference_type n) noexcept {
        set(get() - n);
        return *this;
    }
    offset_ptr &operator++() noexcept { return *this += 1; }
    offset_ptr &operator--() noexcept { return *this -= 1; }
    offset_ptr operator++(int) noexcept {
        offset_ptr t(*this);
        ++*this;
        return t;
    }
    offset_ptr operator--(int) noexcept {
        offset_ptr t(*this);
        --*this;
        return t;
    }
    friend offset_ptr operator+(const offset_ptr &p, difference_type n) noexcept {
        return offset_ptr(p.get() + n);
    }
    friend offset_ptr operator+(difference_type n, const offset_ptr &p) noexcept {
        return offset_ptr(p.get() + n);
    }
    friend offset_ptr operator-(const offset_ptr &p, difference_type n) noexcept {
        return offset_ptr(p.get() - n);
    }
    friend difference_type operator-(const offset_ptr &a, const offset_ptr &b) noexcept {
        return a.get() - b.get();
    }

    // --- comparisons (by target, so pointers at different places compare correctly) ------------
    template <class U>
    friend bool operator==(const offset_ptr &a, const offset_ptr<U> &b) noexcept {
        return a.get() == b.get();
    }
    friend bool operator==(const offset_ptr &a, std::nullptr_t) noexcept { return !a; }
    // A template, so that a literal 0 (libc++'s list compares a node pointer with `0`) is not
    // also a candidate as a `const T*` and picks the nullptr_t overload unambiguously.
    template <class P>
        requires std::is_pointer_v<P> && std::is_convertible_v<P, const volatile T *>
    friend bool operator==(const offset_ptr &a, P b) noexcept {
        return a.get() == b;
    }
    template <class U>
    friend std::strong_ordering operator<=>(const offset_ptr &a, const offset_ptr<U> &b) noexcept {
        return std::compare_three_way{}(a.get(), b.get());
    }

    friend void swap(offset_ptr &a, offset_ptr &b) noexcept {
        T *pa = a.get();
        a = b.get();
        b = pa;
    }

  private:
    static constexpr std::ptrdiff_t kNull = 1;
    void set(T *p) noexcept {
        diff_ = p ? static_cast<std::ptrdiff_t>(reinterpret_cast<std::uintptr_t>(p) -
                                                reinterpret_cast<std::uintptr_t>(this))
                  : kNull;
    }
    std::ptrdiff_t diff_ = kNull; // bytes from this to the target; kNull: null
};

} // namespace shmipc

// std::to_address(offset_ptr<void>) has no operator-> to use: give pointer_traits a to_address.
template <class T> struct std::pointer_traits<shmipc::offset_ptr<T>> {
    using pointer = shmipc::offset_ptr<T>;
    using element_type = T;
    using difference_type = std::ptrdiff_t;
    template <class U> using rebind = shmipc::offset_ptr<U>;
    template <class U = T, std::enable_if_t<!std::is_void_v<U>, int> = 0>
    static pointer pointer_to(U &r) noexcept {
        return pointer(std::addressof(r));
    }
    static T *to_address(const pointer &p) noexcept { return p.get(); }
};

namespace shmipc {
static_assert(sizeof(offset_ptr<int>) == sizeof(void *));
static_assert(std::is_standard_layout_v<offset_ptr<int>>);
static_assert(std::contiguous_iterator<offset_ptr<int>>);
} // namespace shmipc
