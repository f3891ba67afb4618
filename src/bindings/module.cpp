#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "shmipc engine (C++20): shared memory, fd passing, heaps, channels, queues";
    shmipc::bindings::bind_errors(m);
    shmipc::bindings::bind_descriptor(m);
    shmipc::bindings::bind_buffer(m);
    shmipc::bindings::bind_segment(m);
    shmipc::bindings::bind_heap(m);
    shmipc::bindings::bind_dict(m);
    shmipc::bindings::bind_stream(m);
    shmipc::bindings::bind_value(m);
    shmipc::bindings::bind_channel(m);
    shmipc::bindings::bind_topic(m);
    shmipc::bindings::bind_queue(m);
    shmipc::bindings::bind_testing(m);
    shmipc::bindings::bind_reactor(m);
}
