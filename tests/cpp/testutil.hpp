// Helpers shared by the GoogleTest suites (tests/cpp/<folder>/test_<file>.cpp).
#pragma once

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <exception>
#include <string>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace shmipc::testing {

// A shared-memory name no other test (or run) uses: tag + pid + counter.
inline std::string fresh_name(const char *tag) {
    static int n = 0;
    return "shmipc-gtest-" + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(n++);
}

// Anonymous MAP_SHARED memory (zero-filled), shared with forked children.
struct SharedMem {
    explicit SharedMem(std::size_t n) : size(n) {
        void *p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            std::abort();
        data = p;
    }
    ~SharedMem() { ::munmap(data, size); }
    SharedMem(const SharedMem &) = delete;
    SharedMem &operator=(const SharedMem &) = delete;
    template <class T> T *as() const { return static_cast<T *>(data); }
    void *data;
    std::size_t size;
};

// Forks; the child runs body() (returning its exit code; an exception is 99) and never returns.
template <class Body> pid_t fork_child(Body &&body) {
    pid_t pid = ::fork();
    if (pid != 0)
        return pid;
    int code = 0;
    try {
        code = body();
    } catch (const std::exception &e) {
        std::fprintf(stderr, "child failed: %s\n", e.what());
        code = 99;
    }
    ::_exit(code);
}

// Waits for a child at most `limit` (then SIGKILLs it and reports -2). Returns the exit code,
// 128 + signal if it was killed by one, -1 if waitpid failed.
inline int wait_child(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    auto end = std::chrono::steady_clock::now() + limit;
    int status = 0;
    for (;;) {
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0)
            return -1;
        if (std::chrono::steady_clock::now() > end) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return -2;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

// Open descriptors of this process.
inline int open_fd_count() {
    int n = 0;
    if (DIR *d = ::opendir("/proc/self/fd")) {
        while (::readdir(d))
            ++n;
        ::closedir(d);
    }
    return n - 3; // ".", ".." and the directory's own fd
}

} // namespace shmipc::testing
