// Python -> C++: takes the messages queue_producer.py puts with q.put_bytes().
// Run: ./queue_consumer & python examples/cpp/queue_producer.py
#include <shmipc/shmipc.hpp>

#include <chrono>
#include <iostream>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example_results";
    auto q = shmipc::MessageQueue::create(name, {.maxsize = 64, .max_message_size = 1024});
    int n = 0;
    std::string last;
    for (std::string m; (m = q.get_string(std::chrono::seconds(30))) != "stop"; ++n)
        last = m;
    std::cout << "consumer: " << n << " messages, last '" << last << "'\n";
}
