// Helpers shared by the heap's test files (tests/cpp/heap/test_*.cpp).
#pragma once

#include "ipc_core/base/errors.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/heap/layout.hpp"
#include "testutil.hpp"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <gtest/gtest.h>
#include <string>
#include <sys/select.h>
#include <unistd.h>
#include <vector>

namespace shmipc::testing {

inline HeapOptions heap_opts(std::size_t size, bool cache = false) {
    HeapOptions o;
    o.size = size;
    o.thread_cache = cache;
    return o;
}

// The shared control block of a heap (what a scribbling peer sees).
inline HeapControl *control_of(Heap &h) {
    return reinterpret_cast<HeapControl *>(h.base() + sizeof(SegmentHeader));
}

// The links of the free block at header offset `off` of segment 0.
inline FreeLinks *links_at(Heap &h, std::uint64_t off) {
    return reinterpret_cast<FreeLinks *>(h.base() + off + kBlockHeaderSize);
}
inline BlockHeader *header_at(Heap &h, std::uint64_t payload) {
    return static_cast<BlockHeader *>(h.to_ptr(payload - kBlockHeaderSize));
}

// Runs body() in a forked child and expects it to return 0 within `limit`: a crash (signal), a
// hang (killed at the limit) or a non-zero return all fail the test, with what happened.
template <class Body>
void expect_in_child(Body &&body, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    pid_t pid = fork_child(std::forward<Body>(body));
    ASSERT_GT(pid, 0);
    int rc = wait_child(pid, limit);
    EXPECT_EQ(rc, 0) << (rc == -2    ? "the child hung (killed at the time limit)"
                         : rc >= 128 ? "the child died of signal " + std::to_string(rc - 128)
                                     : "the child returned " + std::to_string(rc));
}

// Runs op(): it must throw CorruptSegment or succeed (returns 0), anything else is 1 (with a
// message). For children of expect_in_child.
template <class Op> int corrupt_or_fine(const char *what, Op &&op) {
    try {
        op();
        return 0;
    } catch (const CorruptSegment &) {
        return 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s: unexpected %s\n", what, e.what());
        return 1;
    }
}
// Same, but op() must throw CorruptSegment.
template <class Op> int must_be_corrupt(const char *what, Op &&op) {
    try {
        op();
        std::fprintf(stderr, "%s: no CorruptSegment\n", what);
        return 1;
    } catch (const CorruptSegment &) {
        return 0;
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s: unexpected %s\n", what, e.what());
        return 1;
    }
}

// A pipe to tell a parent "I got here" (bounded read).
struct Signal {
    int fds[2] = {-1, -1};
    Signal() {
        if (::pipe(fds) != 0)
            std::abort();
    }
    ~Signal() {
        ::close(fds[0]);
        ::close(fds[1]);
    }
    void post() const {
        char c = 1;
        (void)!::write(fds[1], &c, 1);
    }
    // True once posted (waits at most `limit`).
    [[nodiscard]] bool wait(std::chrono::milliseconds limit = std::chrono::seconds(30)) const {
        auto end = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < end) {
            fd_set s;
            FD_ZERO(&s);
            FD_SET(fds[0], &s);
            timeval tv{0, 20000};
            if (::select(fds[0] + 1, &s, nullptr, nullptr, &tv) == 1) {
                char c;
                return ::read(fds[0], &c, 1) == 1;
            }
        }
        return false;
    }
};

} // namespace shmipc::testing
