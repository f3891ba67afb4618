// The per-process pool never hands out bytes another process may still map.
#include "ipc_core/base/unique_fd.hpp"
#include "ipc_core/buffer/buffer.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace shmipc;

namespace {
ino_t inode_of(const Buffer &b) {
    struct stat st {};
    EXPECT_EQ(::fstat(b.fileno(), &st), 0);
    return st.st_ino;
}
} // namespace

TEST(BufferPool, a_closed_buffer_of_our_own_is_reused_for_the_next_of_its_size) {
    clear_pool();
    auto a = Buffer::create(1 << 20);
    const ino_t ino = inode_of(*a);
    a->close();
    a.reset();
    auto b = Buffer::create(1 << 20);
    EXPECT_EQ(inode_of(*b), ino);
    clear_pool();
}

TEST(BufferPool, a_buffer_marked_shared_is_never_reused_for_a_new_buffer) {
    clear_pool();
    auto a = Buffer::create(1 << 20);
    a->mark_shared(); // e.g. handed to a multiprocessing child, which still writes into it
    const ino_t ino = inode_of(*a);
    a->close();
    a.reset();
    auto b = Buffer::create(1 << 20);
    EXPECT_NE(inode_of(*b), ino);
    clear_pool();
}

TEST(BufferPool, a_buffer_shared_from_an_fd_is_never_reused_for_a_new_buffer) {
    clear_pool();
    auto owner = Buffer::create(1 << 20);
    auto shared = Buffer::share(UniqueFd(::dup(owner->fileno())), 1 << 20);
    EXPECT_TRUE(shared->shared());
    const ino_t ino = inode_of(*shared);
    shared->close();
    shared.reset();
    auto b = Buffer::create(1 << 20);
    EXPECT_NE(inode_of(*b), ino);
    clear_pool();
}
