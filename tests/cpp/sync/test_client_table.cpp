#include "ipc_core/base/errors.hpp"
#include "ipc_core/sync/client_table.hpp"
#include "ipc_core/sync/liveness.hpp"
#include "testutil.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <vector>

using namespace shmipc;
using shmipc::testing::fork_child;
using shmipc::testing::SharedMem;
using shmipc::testing::wait_child;

namespace {

// A table in a memfd-backed mapping: liveness locks need a real file.
struct TableFile {
    explicit TableFile(std::uint32_t cap) : cap(cap) {
        fd = ::memfd_create("client-table-test", MFD_CLOEXEC);
        bytes = ClientTable::bytes(cap);
        if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0)
            std::abort();
        mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ClientTable::init(mem, cap);
    }
    ~TableFile() {
        ::munmap(mem, bytes);
        ::close(fd);
    }
    // A view with its own open file description, as every handle has.
    ClientTable view(int &own_fd) const {
        own_fd = reopen_description(fd);
        return ClientTable(mem, bytes, cap, own_fd, "test table");
    }
    std::uint32_t cap;
    int fd = -1;
    std::size_t bytes = 0;
    void *mem = nullptr;
};

} // namespace

TEST(ClientTable, registered_clients_get_distinct_slots_and_nonzero_tokens) {
    TableFile f(8);
    int fa, fb;
    ClientTable a = f.view(fa), b = f.view(fb);
    std::uint32_t sa = a.register_client(), sb = b.register_client();
    EXPECT_NE(sa, sb);
    EXPECT_NE(a.token(), 0u);
    EXPECT_NE(a.token(), b.token());
    EXPECT_TRUE(a.alive(sb));
    EXPECT_TRUE(b.alive(sa));
    EXPECT_EQ(a.holder(b.token()), HolderState::Alive);
    EXPECT_EQ(a.active_count(), 2u);
    const std::uint32_t tb = b.token();
    b.unregister_client();
    EXPECT_FALSE(a.alive(sb));
    EXPECT_EQ(a.holder(tb), HolderState::Dead) << "a client that left holds nothing";
    ::close(fa);
    ::close(fb);
}

TEST(ClientTable, a_full_table_is_a_limit_naming_its_size) {
    TableFile f(2);
    int f1, f2, f3;
    ClientTable a = f.view(f1), b = f.view(f2), c = f.view(f3);
    (void)a.register_client();
    (void)b.register_client();
    try {
        (void)c.register_client();
        FAIL() << "a third client fit in a table of two";
    } catch (const LimitReached &e) {
        EXPECT_NE(std::string(e.what()).find("2 live handles"), std::string::npos) << e.what();
    }
    ::close(f1);
    ::close(f2);
    ::close(f3);
}

TEST(ClientTable, a_killed_client_is_dead_and_its_token_stops_being_alive) {
    TableFile f(4);
    auto *shared = static_cast<std::uint32_t *>(
        ::mmap(nullptr, 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    pid_t pid = fork_child([&] {
        int fd;
        ClientTable t = f.view(fd);
        shared[1] = t.register_client();
        __atomic_store_n(&shared[0], t.token(), __ATOMIC_RELEASE);
        ::pause();
        return 0;
    });
    int mine;
    ClientTable me = f.view(mine);
    (void)me.register_client();
    while (__atomic_load_n(&shared[0], __ATOMIC_ACQUIRE) == 0)
        ::usleep(1000);
    std::uint32_t token = shared[0], slot = shared[1];
    EXPECT_EQ(me.holder(token), HolderState::Alive);
    EXPECT_FALSE(me.dead(slot));
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    EXPECT_EQ(me.holder(token), HolderState::Dead);
    EXPECT_TRUE(me.dead(slot));
    std::vector<std::uint32_t> seen;
    me.for_each_dead([&](std::uint32_t s) { seen.push_back(s); });
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0], slot);
    EXPECT_TRUE(me.recycle(slot));
    EXPECT_FALSE(me.dead(slot));
    ::munmap(shared, 64);
    ::close(mine);
}

TEST(ClientTable, a_dead_slot_is_taken_over_only_when_asked_and_after_its_cleanup) {
    TableFile f(1);
    pid_t pid = fork_child([&] {
        int fd;
        ClientTable t = f.view(fd);
        (void)t.register_client();
        ::raise(SIGKILL);
        return 0;
    });
    EXPECT_EQ(wait_child(pid), 128 + SIGKILL);
    int mine;
    ClientTable me = f.view(mine);
    EXPECT_THROW((void)me.register_client(), LimitReached) << "dead but not cleaned: left alone";
    std::vector<std::uint32_t> recycled;
    std::uint32_t s =
        me.register_client(true, [&](std::uint32_t slot) { recycled.push_back(slot); });
    EXPECT_EQ(s, 0u);
    ASSERT_EQ(recycled.size(), 1u);
    ::close(mine);
}

TEST(ClientTable, a_recycled_slot_gets_a_new_token) {
    TableFile f(1);
    int fa, fb;
    ClientTable a = f.view(fa), b = f.view(fb);
    (void)a.register_client();
    std::uint32_t old = a.token();
    a.unregister_client();
    (void)b.register_client();
    EXPECT_NE(b.token(), old);
    EXPECT_EQ(b.holder(old), HolderState::Dead) << "the old token names a client that left";
    ::close(fa);
    ::close(fb);
}

TEST(ClientTable, tokens_it_cannot_have_issued_are_invalid) {
    TableFile f(4);
    int fd;
    ClientTable t = f.view(fd);
    (void)t.register_client();
    EXPECT_EQ(t.holder(0), HolderState::Invalid);
    EXPECT_EQ(t.holder(0xDEADBEEF), HolderState::Invalid) << "bit 31 / slot out of range";
    EXPECT_EQ(t.holder((5u << kTokenSlotBits) | 3u), HolderState::Invalid)
        << "a generation slot 2 never had";
    ::close(fd);
}

TEST(ClientTable, a_scribbled_capacity_fails_validation) {
    TableFile f(4);
    static_cast<ClientTableHeader *>(f.mem)->capacity = 0xFFFFFFFF;
    EXPECT_THROW(ClientTable(f.mem, f.bytes, 4, f.fd, "t"), CorruptSegment);
    static_cast<ClientTableHeader *>(f.mem)->capacity = 4;
    EXPECT_THROW(ClientTable(f.mem, 100, 4, f.fd, "t"), CorruptSegment) << "does not fit";
    EXPECT_NO_THROW(ClientTable(f.mem, f.bytes, 4, f.fd, "t"));
}
