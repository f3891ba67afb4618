// C++ -> Python: jobs as bytes through a message queue (Python: q.get_bytes()).
// Run: python examples/cpp/queue_consumer.py & ./queue_producer
#include "example_util.hpp"

#include <cstdio>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example_jobs";
    auto q = example::retry([&] { return shmipc::MessageQueue::attach(name); });
    for (int i = 0; i < 10; ++i)
        q.put("job " + std::to_string(i), std::chrono::seconds(30));
    q.put("stop");
    std::puts("producer: 10 jobs");
}
