// Private to the public C++ API's implementation (src/cppapi/): the engine's types under
// unambiguous names, the Impl structs behind the public handles, and the wire codecs that
// make C++ objects read and write exactly what the Python layer does.
//
// The public classes (shmipc::v1::Heap, ...) share their names with the engine's
// (shmipc::Heap, ...): the engine's are aliased in namespace shmipc::engine BEFORE the public
// headers are included, so `engine::Heap` here always names the engine's class.
#pragma once

#include "ipc_core/base/array_descriptor.hpp"
#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/errors.hpp"
#include "ipc_core/base/fork_epoch.hpp"
#include "ipc_core/buffer/buffer.hpp"
#include "ipc_core/buffer/fd_passing.hpp"
#include "ipc_core/channel/channel.hpp"
#include "ipc_core/heap/heap.hpp"
#include "ipc_core/queue/message_queue.hpp"
#include "ipc_core/topic/topic.hpp"
#include "ipc_core/value/shared_value.hpp"

namespace shmipc::engine {
using Buffer = ::shmipc::Buffer;
using Channel = ::shmipc::Channel;
using Heap = ::shmipc::Heap;
using HeapOptions = ::shmipc::HeapOptions;
using MessageQueue = ::shmipc::MessageQueue;
using SharedValue = ::shmipc::SharedValue;
using TopicOptions = ::shmipc::TopicOptions;
using TopicPublisher = ::shmipc::TopicPublisher;
using TopicSubscriber = ::shmipc::TopicSubscriber;
using TopicSample = ::shmipc::TopicSample;
} // namespace shmipc::engine

#include "shmipc/shmipc.hpp"

#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace shmipc {
inline namespace v1 {

[[nodiscard]] inline Deadline to_deadline(const WaitFor &w) {
    if (!w)
        return Deadline::never();
    return Deadline(std::chrono::duration<double>(*w).count());
}

// --- codecs: byte for byte what python/shmipc/_buffer.py and _descriptor.py do -------------
namespace codec {
// _buffer._encode_meta / _decode_meta: "" | "B" + bytes | "J" + JSON text.
std::string encode_buffer_meta(const Meta &m);
Meta decode_buffer_meta(std::string_view raw);
// _descriptor.encode / decode: the array descriptor of every kind (buffers, channel records,
// topic samples, shared values), ipc_core/base/array_descriptor.hpp. decode_array throws
// CorruptSegment for a malformed descriptor and for a structured dtype (Python-only), naming
// `what`.
std::string encode_array(const ArrayInfo &a, std::uint64_t offset);
ArrayInfo decode_array(std::string_view raw, std::uint64_t &offset, const char *what);
// Checks that `a` describes an array of a plain dtype that `nbytes` bytes can hold.
void check_array(const ArrayInfo &a, std::size_t nbytes, const char *what);
} // namespace codec

// Python's value type tags (_value.py).
inline constexpr std::uint32_t kValueBytes = 1;
inline constexpr std::uint32_t kValueText = 2;
inline constexpr std::uint32_t kValueArray = 3;

struct Buffer::Impl {
    std::unique_ptr<engine::Buffer> buf;
    Meta meta;
};

struct Heap::Impl {
    std::unique_ptr<engine::Heap> heap;
};

struct Block::Impl {
    std::shared_ptr<Heap::Impl> heap;
    std::uint64_t offset = 0;
    std::size_t nbytes = 0;
    ForkStamp stamp; // a forked child never frees its parent's block
    ~Impl() {
        if (heap && heap->heap) {
            try {
                heap->heap->deallocate(offset, stamp);
            } catch (...) { // a scribbled heap: nothing to free into
            }
        }
    }
};

struct Channel::Impl {
    std::shared_ptr<Heap::Impl> heap; // outlives the channel (declared first)
    std::unique_ptr<engine::Channel> ch;
};

struct MessageQueue::Impl {
    engine::MessageQueue q;
};

struct SharedValue::Impl {
    std::unique_ptr<engine::SharedValue> v;
};

struct Stream::Impl {
    UniqueFd fd;
    std::string name;
    bool owner = false;
    bool remove_on_close = false;
    pid_t pid = 0; // a forked child's copy never removes its parent's name
    ~Impl();
};

// What the implementation files need of the handles' private parts.
struct ApiAccess {
    template <class T> static auto &impl(T &t) { return t.impl_; }
    template <class T> static const auto &impl(const T &t) { return t.impl_; }
    static Buffer make_buffer(std::unique_ptr<Buffer::Impl> i) { return Buffer(std::move(i)); }
    static Block make_block(std::shared_ptr<Heap::Impl> h, std::uint64_t off, std::size_t n);
    static Channel make_channel() { return Channel(); }
    static MessageQueue make_queue() { return MessageQueue(); }
    static SharedValue make_value() { return SharedValue(); }
    static Stream make_stream() { return Stream(); }
};

} // namespace v1
} // namespace shmipc
