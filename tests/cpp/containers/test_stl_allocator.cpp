// shmipc::allocator and shmipc::offset_ptr: standard containers in a shared heap, read and
// modified by processes that map the heap at a different address.
#include "ipc_core/base/errors.hpp"
#include "ipc_core/containers/offset_ptr.hpp"
#include "ipc_core/containers/stl_allocator.hpp"
#include "ipc_core/heap/heap.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <numeric>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace shmipc;

namespace {

std::string fresh(const char *tag) {
    static int n = 0;
    return "shmipc-test-cppstl-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

HeapOptions opts(std::size_t size) {
    HeapOptions o;
    o.size = size;
    return o;
}

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

using Map = flat_map<shmipc::string, shmipc::vector<int>>;

} // namespace

TEST(OffsetPtr, is_null_by_default_and_compares_by_target) {
    offset_ptr<int> p;
    EXPECT_FALSE(p);
    EXPECT_EQ(p, nullptr);
    EXPECT_EQ(p.get(), nullptr);
    int a[4] = {1, 2, 3, 4};
    offset_ptr<int> q = a;
    offset_ptr<int> r = q; // a copy elsewhere points at the same place
    EXPECT_EQ(q, r);
    EXPECT_EQ(*(r + 2), 3);
    EXPECT_EQ((q + 3) - q, 3);
    EXPECT_LT(q, q + 1);
    EXPECT_EQ(q[1], 2);
    offset_ptr<const void> v = q; // implicit to const void
    EXPECT_EQ(v.get(), a);
    offset_ptr<void> w = q;
    EXPECT_EQ(static_cast<offset_ptr<int>>(w), q); // explicit back
    EXPECT_EQ(std::pointer_traits<offset_ptr<int>>::pointer_to(a[1]).get(), &a[1]);
}

TEST(OffsetPtr, keeps_pointing_into_its_block_when_the_block_is_copied_elsewhere) {
    // What a second mapping at another address looks like: the same bytes, elsewhere.
    struct Node {
        offset_ptr<Node> next;
        int value;
    };
    alignas(Node) unsigned char one[3 * sizeof(Node)];
    alignas(Node) unsigned char two[3 * sizeof(Node)];
    auto *n = reinterpret_cast<Node *>(one);
    for (int i = 0; i < 3; ++i) {
        new (&n[i]) Node{i < 2 ? offset_ptr<Node>(&n[i + 1]) : offset_ptr<Node>(), i * 10};
        n[i].next = i < 2 ? &n[i + 1] : nullptr;
    }
    std::memcpy(two, one, sizeof(one));
    auto *m = reinterpret_cast<Node *>(two);
    EXPECT_EQ(m[0].next.get(), &m[1]);
    EXPECT_EQ(m[0].next->next->value, 20);
    EXPECT_FALSE(m[2].next);
}

TEST(StlAllocator, vector_and_string_live_in_the_heap) {
    auto h = Heap::anonymous(opts(1 << 20));
    HeapRegistration reg(*h);
    auto &v = named<shmipc::vector<shmipc::string>>(*h, "v", allocator<shmipc::string>(*h));
    v.emplace_back("short");
    v.emplace_back(std::string(1000, 'x')); // beyond the small-string buffer
    for (int i = 0; i < 100; ++i)
        v.emplace_back(std::to_string(i));
    auto in_heap = [&](const void *p) {
        return p >= h->base() && p < h->base() + h->primary_size();
    };
    EXPECT_TRUE(in_heap(v.data()));
    EXPECT_TRUE(in_heap(v[1].data()));
    EXPECT_TRUE(in_heap(v[0].data())); // small string: its buffer is inside the element
    EXPECT_EQ(v[1].size(), 1000u);
    EXPECT_EQ(v[101], "99");
    v.clear();
    v.shrink_to_fit();
    h->flush_thread_caches();
    h->check_invariants();
}

TEST(StlAllocator, child_at_another_address_reads_a_map_built_by_the_parent) {
    auto name = fresh("map");
    auto h = Heap::create(name, opts(4 << 20));
    HeapRegistration reg(*h);
    Map &m = named<Map>(*h, "m", Map::allocator_type(*h));
    for (int i = 0; i < 500; ++i) {
        auto &vec = m["key-" + std::to_string(i)];
        for (int j = 0; j <= i % 7; ++j)
            vec.push_back(i * 100 + j);
    }
    m.insert_or_assign("a long key that does not fit in the small string buffer",
                       shmipc::vector<int>({1, 2, 3}, Map::allocator_type(*h)));
    int rc = in_child_at_another_address(*h, [](Heap &mine) {
        auto info = mine.find_named("m");
        if (!info)
            return false;
        const Map &cm = *static_cast<const Map *>(mine.to_ptr(info->offset));
        if (cm.size() != 501)
            return false;
        for (int i = 0; i < 500; ++i) {
            auto it = cm.find("key-" + std::to_string(i));
            if (it == cm.end() || it->second.size() != std::size_t(i % 7 + 1))
                return false;
            if (it->second.back() != i * 100 + i % 7)
                return false;
        }
        auto &l = cm.at("a long key that does not fit in the small string buffer");
        return std::accumulate(l.begin(), l.end(), 0) == 6 && std::is_sorted(cm.begin(), cm.end());
    });
    EXPECT_EQ(rc, 0);
}

TEST(StlAllocator, child_at_another_address_modifies_containers_the_parent_then_reads) {
    auto name = fresh("modify");
    auto h = Heap::create(name, opts(4 << 20));
    HeapRegistration reg(*h);
    Map &m = named<Map>(*h, "m", Map::allocator_type(*h));
    using Set = flat_set<shmipc::string>;
    Set &s = named<Set>(*h, "s", Set::allocator_type(*h));
    m["parent"].push_back(1);
    s.insert("parent");
    int rc = in_child_at_another_address(*h, [](Heap &mine) {
        HeapRegistration r(mine); // the child allocates through its own mapping
        Map &cm = *static_cast<Map *>(mine.to_ptr(mine.find_named("m")->offset));
        Set &cs = *static_cast<Set *>(mine.to_ptr(mine.find_named("s")->offset));
        for (int i = 0; i < 200; ++i)
            cm["child-" + std::to_string(i)].assign(50, i);
        cm["parent"].push_back(2);
        for (int i = 0; i < 200; ++i)
            cs.insert("child-" + std::to_string(i));
        cs.erase("parent");
        mine.flush_thread_caches(); // blocks it freed go back to the shared heap
        return true;
    });
    ASSERT_EQ(rc, 0);
    h->reap_dead_clients();
    EXPECT_EQ(m.size(), 201u);
    EXPECT_EQ(m.at("parent").size(), 2u);
    EXPECT_EQ(m.at("child-199").size(), 50u);
    EXPECT_EQ(m.at("child-7")[49], 7);
    EXPECT_EQ(s.size(), 200u);
    EXPECT_FALSE(s.contains("parent"));
    EXPECT_TRUE(s.contains("child-42"));
    h->check_invariants();
}

TEST(StlAllocator, containers_outlive_a_killed_process_that_built_them) {
    auto name = fresh("outlive");
    auto h = Heap::create(name, opts(2 << 20));
    HeapRegistration reg(*h);
    auto &v = named<shmipc::vector<shmipc::string>>(*h, "v", allocator<shmipc::string>(*h));
    pid_t pid = ::fork();
    if (pid == 0) {
        auto mine = Heap::attach(name);
        HeapRegistration r(*mine);
        auto &cv = *static_cast<shmipc::vector<shmipc::string> *>(
            mine->to_ptr(mine->find_named("v")->offset));
        for (int i = 0; i < 100; ++i)
            cv.emplace_back(std::string(100, char('a' + i % 26)));
        ::raise(SIGKILL);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(st));
    h->reap_dead_clients(); // frees what the child owned: not the container's blocks
    h->check_invariants();
    ASSERT_EQ(v.size(), 100u);
    EXPECT_EQ(std::string_view(v[25]), std::string(100, 'z'));
}

TEST(StlAllocator, a_full_heap_throws_bad_alloc_and_stays_usable) {
    auto h = Heap::anonymous(opts(kMinHeapSize));
    HeapRegistration reg(*h);
    auto &v = named<shmipc::vector<std::uint64_t>>(*h, "v", allocator<std::uint64_t>(*h));
    std::size_t last_size = 0;
    bool threw = false;
    try {
        for (std::uint64_t i = 0;; ++i) {
            v.push_back(i);
            last_size = v.size();
        }
    } catch (const std::bad_alloc &e) {
        threw = true;
        EXPECT_NE(std::string(e.what()).find("cannot allocate"), std::string::npos) << e.what();
    }
    ASSERT_TRUE(threw);
    // Strong guarantee of push_back: the vector is intact.
    ASSERT_EQ(v.size(), last_size);
    for (std::size_t i = 0; i < v.size(); ++i)
        ASSERT_EQ(v[i], i);
    h->check_invariants();
    // The heap still serves allocations, also to other containers.
    v.clear();
    v.shrink_to_fit();
    shmipc::vector<int> w{allocator<int>(*h)};
    w.assign(1000, 7);
    EXPECT_EQ(w[999], 7);
    w = shmipc::vector<int>(allocator<int>(*h));
    using V = shmipc::vector<std::uint64_t>;
    v.~V();
    EXPECT_TRUE(h->remove_named("v"));
    h->flush_thread_caches();
    h->check_invariants();
    EXPECT_TRUE(h->all_freed());
}

TEST(StlAllocator, containers_refuse_blocks_in_extension_segments) {
    auto name = fresh("grow");
    HeapOptions o = opts(512 << 10);
    o.max_size = 4 << 20;
    auto h = Heap::create(name, o);
    HeapRegistration reg(*h);
    shmipc::vector<char> v{allocator<char>(*h)};
    EXPECT_THROW(v.reserve(2 << 20), std::bad_alloc); // would land in a grown segment
    v.assign(1000, 'x');                              // the primary still serves
    auto *d = reinterpret_cast<std::byte *>(v.data());
    EXPECT_TRUE(d >= h->base() && d < h->base() + h->primary_size());
    auto raw = h->allocate(1 << 20); // the heap itself still grows for other users
    EXPECT_NE(raw >> kSegmentShift, 0u);
    h->deallocate(raw);
}

TEST(StlAllocator, allocating_without_a_registration_is_a_logic_error) {
    auto h = Heap::anonymous(opts(1 << 20));
    shmipc::vector<int> v{allocator<int>(*h)};
    EXPECT_THROW(v.push_back(1), UsageError);
    shmipc::vector<int> unbound;
    EXPECT_THROW(unbound.push_back(1), UsageError);
}

// A second mapping of the same memfd at another address in this process: what a container reads
// through it shows whether it is address independent. Documents libstdc++ 12's limitation.
TEST(StlAllocator, std_map_links_nodes_with_raw_pointers_so_only_flat_map_is_address_independent) {
    auto h = Heap::anonymous(opts(1 << 20));
    HeapRegistration reg(*h);
    using StdMap = std::map<int, int, std::less<>, allocator<std::pair<const int, int>>>;
    auto &sm = named<StdMap>(*h, "std", StdMap::allocator_type(*h));
    using Flat = flat_map<int, int>;
    auto &fm = named<Flat>(*h, "flat", Flat::allocator_type(*h));
    for (int i = 0; i < 10; ++i) {
        sm[i] = i * i;
        fm[i] = i * i;
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
    const auto &fm2 = *reinterpret_cast<const Flat *>(moved(&fm));
    EXPECT_TRUE(in_view(&*fm2.begin())); // offset_ptr: resolved in the second mapping
    EXPECT_EQ(fm2.at(7), 49);
    const auto &sm2 = *reinterpret_cast<const StdMap *>(moved(&sm));
    EXPECT_FALSE(in_view(&*sm2.begin())); // raw pointer: still into the first mapping
    ::munmap(view, size);
}
