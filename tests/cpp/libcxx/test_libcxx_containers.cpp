// Node-based standard containers (std::map, std::set, std::list, std::unordered_map) in a shared
// heap with shmipc::allocator, built with clang++ and libc++ (-stdlib=libc++). libc++ links the
// nodes of these containers with the allocator's pointer type (our self-relative offset_ptr), so
// unlike libstdc++ 12 they work in processes that map the heap at different addresses.
//
// Built by tests/cpp/libcxx/CMakeLists.txt (the executable shmipc_libcxx_tests), not by the main
// g++ build. Not possible with libc++: shmipc::string (std::basic_string with our allocator),
// because libc++'s basic_string keeps its pointer in a union it copies as a whole, which needs a
// trivially copyable pointer; a self-relative pointer cannot be one. Keys here are therefore
// shmipc::vector<char> (a byte string compared like one).
#include "ipc_core/containers/offset_ptr.hpp"
#include "ipc_core/containers/stl_allocator.hpp"
#include "ipc_core/heap/heap.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <forward_list>
#include <functional>
#include <list>
#include <map>
#include <new>
#include <set>
#include <signal.h>
#include <string>
#include <string_view>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>

#ifndef _LIBCPP_VERSION
#error "tests/cpp/libcxx is built with libc++ only (clang++ -stdlib=libc++)"
#endif

using namespace shmipc;

namespace {

std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-test-libcxx-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

HeapOptions opts(std::size_t size) {
    HeapOptions o;
    o.size = size;
    return o;
}

// A string key in the heap: libc++'s basic_string cannot take offset_ptr (see the top).
using Bytes = shmipc::vector<char>;
std::string_view view(const Bytes &b) {
    return {b.data(), b.size()};
}
std::string_view view(std::string_view s) {
    return s;
}
// Orders Bytes as strings and finds them with a std::string / string_view / literal, so a
// process that only reads (no HeapRegistration) can look keys up without allocating.
struct BytesLess {
    using is_transparent = void;
    template <class A, class B> bool operator()(const A &a, const B &b) const {
        return view(a) < view(b);
    }
};
Bytes bytes(Heap &h, std::string_view s) {
    return Bytes(s.begin(), s.end(), allocator<char>(h));
}

using Map = std::map<Bytes, shmipc::vector<int>, BytesLess,
                     allocator<std::pair<const Bytes, shmipc::vector<int>>>>;
using Set = std::set<int, std::less<int>, allocator<int>>;
using List = std::list<int, allocator<int>>;
using IntMap = std::map<int, int, std::less<int>, allocator<std::pair<const int, int>>>;
using Hash = std::unordered_map<int, int, std::hash<int>, std::equal_to<int>,
                                allocator<std::pair<const int, int>>>;

// Runs `body` in a forked child that first makes the parent's mapping of `h` inaccessible (so
// any raw pointer into it faults) and attaches the heap again (necessarily elsewhere). Returns
// the child's exit status: 0 when body returned true.
int in_child_at_another_address(Heap &h, const std::function<bool(Heap &)> &body) {
    pid_t pid = ::fork();
    if (pid == 0) {
        ::alarm(30); // bounded: a hang becomes a failure
        int rc = 1;
        try {
            void *old = h.base();
            std::size_t size = h.primary_size();
            if (::mmap(old, size, PROT_NONE,
                       MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                       0) == MAP_FAILED)
                ::_exit(10);
            auto mine = Heap::attach(h.name());
            if (mine->base() == old)
                ::_exit(11);
            rc = body(*mine) ? 0 : 12;
        } catch (const std::exception &e) {
            std::fprintf(stderr, "child: %s\n", e.what());
            rc = 13;
        }
        ::_exit(rc);
    }
    int st = 0;
    if (::waitpid(pid, &st, 0) != pid)
        return -1;
    if (WIFSIGNALED(st))
        return 100 + WTERMSIG(st);
    return WEXITSTATUS(st);
}

template <class T, class... Args> T &named(Heap &h, const char *name, Args &&...args) {
    auto [off, created] = h.find_or_create_named(
        name, sizeof(T), [&](void *p) { new (p) T(std::forward<Args>(args)...); });
    (void)created;
    return *static_cast<T *>(h.to_ptr(off));
}

template <class T> T &found(Heap &h, const char *name) {
    auto info = h.find_named(name);
    if (!info)
        throw std::runtime_error(std::string("no named object ") + name);
    return *static_cast<T *>(h.to_ptr(info->offset));
}

std::string key(int i) {
    return "key-" + std::to_string(i) + (i % 3 == 0 ? std::string(40, '~') : "");
}

} // namespace

TEST(LibcxxContainers, map_set_and_list_nodes_are_in_the_heap) {
    auto h = Heap::anonymous(opts(1 << 20));
    HeapRegistration reg(*h);
    auto in_heap = [&](const void *p) {
        return p >= h->base() && p < h->base() + h->primary_size();
    };
    auto &m = named<IntMap>(*h, "m", IntMap::allocator_type(*h));
    auto &s = named<Set>(*h, "s", Set::allocator_type(*h));
    auto &l = named<List>(*h, "l", List::allocator_type(*h));
    for (int i = 0; i < 100; ++i) {
        m[i] = i;
        s.insert(i);
        l.push_back(i);
    }
    EXPECT_TRUE(in_heap(&*m.find(50)));
    EXPECT_TRUE(in_heap(&*s.find(50)));
    EXPECT_TRUE(in_heap(&l.back()));
    m.clear();
    s.clear();
    l.clear();
    h->flush_thread_caches();
    h->check_invariants();
}

// The same memfd mapped a second time in this process, elsewhere: what a container reads through
// it shows whether it is address independent (the libstdc++ 12 twin of this test shows std::map
// still pointing into the first mapping).
TEST(LibcxxContainers, map_set_list_and_unordered_map_read_through_a_second_mapping_stay_in_it) {
    auto h = Heap::anonymous(opts(1 << 20));
    HeapRegistration reg(*h);
    auto &m = named<IntMap>(*h, "m", IntMap::allocator_type(*h));
    auto &s = named<Set>(*h, "s", Set::allocator_type(*h));
    auto &l = named<List>(*h, "l", List::allocator_type(*h));
    auto &u = named<Hash>(*h, "u", Hash::allocator_type(*h));
    for (int i = 0; i < 50; ++i) {
        m[i] = i * i;
        s.insert(i * 3);
        l.push_front(i);
        u[i] = -i;
    }
    std::size_t size = h->primary_size();
    auto *view = static_cast<std::byte *>(::mmap(nullptr, size, PROT_READ, MAP_SHARED, h->fd(), 0));
    ASSERT_NE(view, MAP_FAILED);
    auto moved = [&](const void *p) {
        return view + (static_cast<const std::byte *>(p) - h->base());
    };
    auto in_view = [&](const void *p) {
        return static_cast<const std::byte *>(p) >= view &&
               static_cast<const std::byte *>(p) < view + size;
    };
    const auto &m2 = *reinterpret_cast<const IntMap *>(moved(&m));
    const auto &s2 = *reinterpret_cast<const Set *>(moved(&s));
    const auto &l2 = *reinterpret_cast<const List *>(moved(&l));
    const auto &u2 = *reinterpret_cast<const Hash *>(moved(&u));
    EXPECT_TRUE(in_view(&*m2.begin()));
    EXPECT_TRUE(in_view(&*m2.find(7)));
    EXPECT_EQ(m2.at(7), 49);
    EXPECT_EQ(m2.size(), 50u);
    EXPECT_TRUE(in_view(&*s2.rbegin()));
    EXPECT_EQ(*s2.rbegin(), 147);
    EXPECT_TRUE(in_view(&l2.front()));
    EXPECT_EQ(l2.front(), 49);
    EXPECT_EQ(l2.back(), 0);
    EXPECT_TRUE(in_view(&*u2.find(9)));
    EXPECT_EQ(u2.at(9), -9);
    ::munmap(view, size);
}

TEST(LibcxxContainers,
     deque_multimap_forward_list_and_unordered_set_read_through_a_second_mapping_stay_in_it) {
    using Deque = std::deque<int, allocator<int>>;
    using Multi = std::multimap<int, int, std::less<int>, allocator<std::pair<const int, int>>>;
    using Fwd = std::forward_list<int, allocator<int>>;
    using USet = std::unordered_set<int, std::hash<int>, std::equal_to<int>, allocator<int>>;
    auto h = Heap::anonymous(opts(1 << 20));
    HeapRegistration reg(*h);
    auto &d = named<Deque>(*h, "d", Deque::allocator_type(*h));
    auto &mm = named<Multi>(*h, "mm", Multi::allocator_type(*h));
    auto &f = named<Fwd>(*h, "f", Fwd::allocator_type(*h));
    auto &us = named<USet>(*h, "us", USet::allocator_type(*h));
    for (int i = 0; i < 1000; ++i) { // several deque blocks, rehashes of the set
        d.push_back(i);
        d.push_front(-i);
        mm.emplace(i % 10, i);
        f.push_front(i);
        us.insert(i);
    }
    std::size_t size = h->primary_size();
    auto *view = static_cast<std::byte *>(::mmap(nullptr, size, PROT_READ, MAP_SHARED, h->fd(), 0));
    ASSERT_NE(view, MAP_FAILED);
    auto moved = [&](const void *p) {
        return view + (static_cast<const std::byte *>(p) - h->base());
    };
    auto in_view = [&](const void *p) {
        return static_cast<const std::byte *>(p) >= view &&
               static_cast<const std::byte *>(p) < view + size;
    };
    const auto &d2 = *reinterpret_cast<const Deque *>(moved(&d));
    const auto &mm2 = *reinterpret_cast<const Multi *>(moved(&mm));
    const auto &f2 = *reinterpret_cast<const Fwd *>(moved(&f));
    const auto &us2 = *reinterpret_cast<const USet *>(moved(&us));
    EXPECT_TRUE(in_view(&d2[0]));
    EXPECT_TRUE(in_view(&d2[1500]));
    EXPECT_EQ(d2.front(), -999);
    EXPECT_EQ(d2[1500], 500); // -999..-1, 0 (front), 0 (back), 1..999
    EXPECT_EQ(d2.back(), 999);
    EXPECT_TRUE(in_view(&*mm2.find(3)));
    EXPECT_EQ(mm2.count(3), 100u);
    EXPECT_TRUE(in_view(&f2.front()));
    EXPECT_EQ(f2.front(), 999);
    EXPECT_TRUE(in_view(&*us2.find(777)));
    EXPECT_EQ(us2.count(777), 1u);
    EXPECT_EQ(us2.count(1000), 0u);
    ::munmap(view, size);
}

TEST(LibcxxContainers, child_at_another_address_reads_map_set_and_list_built_by_the_parent) {
    auto name = fresh("read");
    auto h = Heap::create(name, opts(4 << 20));
    HeapRegistration reg(*h);
    auto &m = named<Map>(*h, "m", Map::allocator_type(*h));
    auto &s = named<Set>(*h, "s", Set::allocator_type(*h));
    auto &l = named<List>(*h, "l", List::allocator_type(*h));
    auto &u = named<Hash>(*h, "u", Hash::allocator_type(*h));
    for (int i = 0; i < 500; ++i) {
        auto &vec = m.try_emplace(bytes(*h, key(i))).first->second;
        for (int j = 0; j <= i % 7; ++j)
            vec.push_back(i * 100 + j);
        s.insert(i * 2);
        l.push_back(i);
        u[i] = i + 1;
    }
    int rc = in_child_at_another_address(*h, [](Heap &mine) {
        // Reading needs no HeapRegistration: lookups with a string_view allocate nothing.
        const auto &cm = found<const Map>(mine, "m");
        const auto &cs = found<const Set>(mine, "s");
        const auto &cl = found<const List>(mine, "l");
        const auto &cu = found<const Hash>(mine, "u");
        if (cm.size() != 500 || cs.size() != 500 || cl.size() != 500 || cu.size() != 500)
            return false;
        for (int i = 0; i < 500; ++i) {
            auto it = cm.find(key(i));
            if (it == cm.end() || it->second.size() != std::size_t(i % 7 + 1))
                return false;
            if (it->second.back() != i * 100 + i % 7)
                return false;
            if (!cs.contains(i * 2) || cs.contains(i * 2 + 1))
                return false;
            if (cu.at(i) != i + 1)
                return false;
        }
        if (!std::is_sorted(cm.begin(), cm.end(),
                            [](auto &a, auto &b) { return view(a.first) < view(b.first); }))
            return false;
        int expect = 0;
        for (int v : cl)
            if (v != expect++)
                return false;
        expect = 499; // and backwards, through the prev links
        for (auto it = cl.rbegin(); it != cl.rend(); ++it)
            if (*it != expect--)
                return false;
        return *cs.lower_bound(101) == 102;
    });
    EXPECT_EQ(rc, 0);
}

TEST(LibcxxContainers, child_at_another_address_modifies_map_set_and_list_the_parent_then_reads) {
    auto name = fresh("modify");
    auto h = Heap::create(name, opts(4 << 20));
    HeapRegistration reg(*h);
    auto &m = named<Map>(*h, "m", Map::allocator_type(*h));
    auto &s = named<Set>(*h, "s", Set::allocator_type(*h));
    auto &l = named<List>(*h, "l", List::allocator_type(*h));
    m.try_emplace(bytes(*h, "parent")).first->second.push_back(1);
    for (int i = 0; i < 100; ++i)
        s.insert(i);
    l.assign({1, 2, 3});
    int rc = in_child_at_another_address(*h, [](Heap &mine) {
        HeapRegistration r(mine); // the child allocates through its own mapping
        auto &cm = found<Map>(mine, "m");
        auto &cs = found<Set>(mine, "s");
        auto &cl = found<List>(mine, "l");
        for (int i = 0; i < 200; ++i)
            cm.try_emplace(bytes(mine, "child-" + std::to_string(i))).first->second.assign(50, i);
        cm.find("parent")->second.push_back(2);
        for (int i = 0; i < 100; i += 2)
            cs.erase(i); // rebalances the tree: links rewritten
        for (int i = 1000; i < 1100; ++i)
            cs.insert(i);
        cl.remove(2);
        cl.push_front(0);
        cl.push_back(4);
        cl.sort(std::greater<int>()); // relinks every node
        mine.flush_thread_caches();   // blocks it freed go back to the shared heap
        return true;
    });
    ASSERT_EQ(rc, 0);
    h->reap_dead_clients();
    EXPECT_EQ(m.size(), 201u);
    EXPECT_EQ(m.find("parent")->second.size(), 2u);
    EXPECT_EQ(m.find("child-199")->second.size(), 50u);
    EXPECT_EQ(m.find("child-7")->second[49], 7);
    EXPECT_EQ(s.size(), 150u);
    EXPECT_FALSE(s.contains(42));
    EXPECT_TRUE(s.contains(43));
    EXPECT_TRUE(s.contains(1099));
    EXPECT_TRUE(std::is_sorted(s.begin(), s.end()));
    EXPECT_EQ(std::vector<int>(l.begin(), l.end()), (std::vector<int>{4, 3, 1, 0}));
    // The parent keeps modifying what the child built.
    m.erase(m.find("child-0"));
    s.clear();
    l.clear();
    EXPECT_EQ(m.size(), 200u);
    h->check_invariants();
}

TEST(LibcxxContainers, a_full_heap_throws_bad_alloc_on_insertion_and_the_map_and_heap_stay_usable) {
    auto h = Heap::anonymous(opts(kMinHeapSize));
    HeapRegistration reg(*h);
    auto &m = named<IntMap>(*h, "m", IntMap::allocator_type(*h));
    int inserted = 0;
    bool threw = false;
    try {
        for (int i = 0;; ++i) {
            m.emplace(i, i * 2);
            inserted = i + 1;
        }
    } catch (const std::bad_alloc &e) {
        threw = true;
        EXPECT_NE(dynamic_cast<const heap_bad_alloc *>(&e), nullptr); // ours, with a message
        EXPECT_NE(std::string(e.what()).find("cannot allocate"), std::string::npos) << e.what();
    }
    ASSERT_TRUE(threw);
    ASSERT_GT(inserted, 0);
    // Strong guarantee of emplace: exactly the successful insertions are there, intact.
    ASSERT_EQ(m.size(), std::size_t(inserted));
    int i = 0;
    for (auto &[k, v] : m) {
        ASSERT_EQ(k, i);
        ASSERT_EQ(v, i * 2);
        ++i;
    }
    h->check_invariants();
    // Free some room: the same map and another container allocate again.
    for (int k = 0; k < 100; ++k)
        m.erase(k);
    h->flush_thread_caches();
    m.emplace(-1, 1);
    // In the heap, not on the stack: with a fancy pointer, libc++'s tree static_casts its end
    // node (a member of the set object) to a node pointer, which UBSan flags as a downcast of
    // an object too small when it can see the object's size (a local). Containers belong in
    // the heap anyway.
    auto &s = named<Set>(*h, "s", Set::allocator_type(*h));
    for (int k = 0; k < 50; ++k)
        s.insert(k);
    EXPECT_EQ(s.size(), 50u);
    EXPECT_EQ(m.at(-1), 1);
    s.clear();
    s.~Set();
    m.~IntMap();
    EXPECT_TRUE(h->remove_named("s"));
    EXPECT_TRUE(h->remove_named("m"));
    h->flush_thread_caches();
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(LibcxxContainers, map_set_and_list_outlive_a_killed_process_that_built_them) {
    auto name = fresh("outlive");
    auto h = Heap::create(name, opts(2 << 20));
    HeapRegistration reg(*h);
    auto &m = named<Map>(*h, "m", Map::allocator_type(*h));
    auto &s = named<Set>(*h, "s", Set::allocator_type(*h));
    auto &l = named<List>(*h, "l", List::allocator_type(*h));
    pid_t pid = ::fork();
    if (pid == 0) {
        ::alarm(30);
        auto mine = Heap::attach(name);
        HeapRegistration r(*mine);
        auto &cm = found<Map>(*mine, "m");
        auto &cs = found<Set>(*mine, "s");
        auto &cl = found<List>(*mine, "l");
        for (int i = 0; i < 100; ++i) {
            cm.try_emplace(bytes(*mine, key(i))).first->second.assign(10, i);
            cs.insert(i);
            cl.push_back(i);
        }
        ::raise(SIGKILL); // dies holding the containers (and its thread caches)
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(st));
    h->reap_dead_clients(); // frees what the child owned: not the containers' blocks
    h->check_invariants();
    ASSERT_EQ(m.size(), 100u);
    ASSERT_EQ(s.size(), 100u);
    ASSERT_EQ(l.size(), 100u);
    EXPECT_EQ(m.find(key(42))->second[9], 42);
    EXPECT_EQ(*s.rbegin(), 99);
    EXPECT_EQ(l.back(), 99);
    // Still fully usable by the survivor.
    m.clear();
    s.clear();
    l.clear();
    h->flush_thread_caches();
    h->check_invariants();
}

TEST(LibcxxContainers, offset_ptr_meets_what_libcxx_node_containers_use) {
    struct Base {
        int b = 1;
    };
    struct Derived : Base {
        int d = 2;
    };
    Derived x;
    offset_ptr<Derived> pd = &x;
    offset_ptr<Base> pb = pd;                         // implicit upcast
    auto back = static_cast<offset_ptr<Derived>>(pb); // explicit downcast (node base -> node)
    EXPECT_EQ(back.get(), &x);
    offset_ptr<void> pv = pd;
    EXPECT_EQ(static_cast<offset_ptr<Derived>>(pv)->d, 2);
    EXPECT_TRUE(nullptr == offset_ptr<int>());
    EXPECT_TRUE(offset_ptr<int>() == nullptr);
    static_assert(!std::is_convertible_v<offset_ptr<Base>, offset_ptr<Derived>>);
    static_assert(!std::is_constructible_v<offset_ptr<int>, offset_ptr<const int>>);
    static_assert(
        std::is_same_v<std::pointer_traits<offset_ptr<int>>::rebind<long>, offset_ptr<long>>);
}
