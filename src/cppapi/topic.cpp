// shmipc::v1::Publisher / Subscriber / Sample over the engine's topic (src/ipc_core/topic).
// Array samples carry the array descriptor of every kind (ipc_core/base/array_descriptor.hpp),
// as python/shmipc/_topic.py writes and reads it (through _descriptor.py).
#include "internal.hpp"

#include <utility>

namespace shmipc {
inline namespace v1 {

struct Publisher::Impl {
    std::shared_ptr<Heap::Impl> heap; // outlives the publisher (declared first)
    std::unique_ptr<engine::TopicPublisher> pub;
    std::string name;
};

struct Subscriber::Impl {
    std::shared_ptr<Heap::Impl> heap; // outlives the subscriber (declared first)
    std::unique_ptr<engine::TopicSubscriber> sub;
    std::string name;
};

struct Sample::Impl {
    std::shared_ptr<Subscriber::Impl> sub; // keeps the subscriber (and heap) while we hold it
    engine::TopicSample s;
    const std::byte *data = nullptr;
    std::size_t start = 0;
    ArrayInfo info;
    bool array = false;
    ~Impl() {
        if (sub && sub->sub) {
            try {
                sub->sub->release(s);
            } catch (...) { // a scribbled topic: the reference stays until we die
            }
        }
    }
};

namespace {
engine::Heap &engine_heap(Heap &h) {
    auto &hi = ApiAccess::impl(h);
    if (!hi || !hi->heap)
        throw Closed("Heap is closed");
    return *hi->heap;
}
} // namespace

// --- Sample ------------------------------------------------------------------------------------

Sample::Sample() noexcept = default;
Sample::Sample(Sample &&) noexcept = default;
Sample &Sample::operator=(Sample &&) noexcept = default;
Sample::~Sample() = default;

std::span<const std::byte> Sample::bytes() const {
    if (!impl_)
        throw Closed("Sample is released");
    if (impl_->array)
        return {impl_->data + impl_->start, impl_->info.nbytes()};
    return {impl_->data, static_cast<std::size_t>(impl_->s.length)};
}
std::uint64_t Sample::seq() const noexcept {
    return impl_ ? impl_->s.seq : 0;
}
bool Sample::is_array() const noexcept {
    return impl_ && impl_->array;
}
const ArrayInfo &Sample::info() const noexcept {
    static const ArrayInfo none{"|u1", {0}, false};
    return impl_ ? impl_->info : none;
}
bool Sample::released() const noexcept {
    return !impl_;
}
void Sample::release() noexcept {
    impl_.reset();
}

// --- Publisher ---------------------------------------------------------------------------------

Publisher Publisher::open(Heap &heap, std::string_view name, const TopicOptions &options) {
    engine::TopicOptions o;
    o.capacity = options.capacity;
    o.history = options.history;
    o.overflow = options.drop_oldest ? Overflow::DropOldest : Overflow::Block;
    o.max_subscribers = options.max_subscribers;
    Publisher p;
    p.impl_ = std::make_unique<Impl>();
    p.impl_->heap = ApiAccess::impl(heap);
    p.impl_->pub = engine::TopicPublisher::open(engine_heap(heap), name, o);
    p.impl_->name = std::string(name);
    return p;
}
Publisher::Publisher(Publisher &&) noexcept = default;
Publisher &Publisher::operator=(Publisher &&) noexcept = default;
Publisher::~Publisher() = default; // without close(): subscribers drain, then PeerDied

namespace {
engine::TopicPublisher &pub_of(const std::unique_ptr<Publisher::Impl> &i) {
    if (!i || !i->pub)
        throw Closed("Publisher is closed");
    return *i->pub;
}
} // namespace

void Publisher::publish(Block &&blk, WaitFor timeout) {
    engine::TopicPublisher &p = pub_of(impl_);
    auto &bi = ApiAccess::impl(blk);
    if (!bi)
        throw Closed("Block is released");
    if (bi->heap != impl_->heap)
        throw InvalidArgument("not a Block of this publisher's heap handle");
    // On any failure the engine leaves the block ours, so the Block stays valid then.
    p.publish_block(bi->offset, bi->nbytes, {}, to_deadline(timeout));
    bi->heap.reset(); // the subscribers' now: forget without freeing
    bi.reset();
}
void Publisher::publish(std::span<const std::byte> bytes, WaitFor timeout) {
    pub_of(impl_).publish_bytes(bytes.data(), bytes.size(), {}, to_deadline(timeout));
}
void Publisher::publish(std::string_view bytes, WaitFor timeout) {
    publish(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())), timeout);
}
void Publisher::publish_array(std::span<const std::byte> bytes, const ArrayInfo &info,
                              WaitFor timeout) {
    codec::check_array(info, bytes.size(), "publish_array");
    pub_of(impl_).publish_bytes(bytes.data(), info.nbytes(), codec::encode_array(info, 0),
                                to_deadline(timeout));
}
std::uint32_t Publisher::subscribers() const {
    return pub_of(impl_).subscribers();
}
const std::string &Publisher::name() const {
    if (!impl_)
        throw Closed("Publisher is closed");
    return impl_->name;
}
void Publisher::close() {
    if (impl_ && impl_->pub) {
        impl_->pub->close();
        impl_->pub.reset();
    }
}
bool Publisher::closed() const noexcept {
    return !impl_ || !impl_->pub;
}

// --- Subscriber --------------------------------------------------------------------------------

Subscriber Subscriber::open(Heap &heap, std::string_view name) {
    Subscriber s;
    s.impl_ = std::make_shared<Impl>();
    s.impl_->heap = ApiAccess::impl(heap);
    s.impl_->sub = engine::TopicSubscriber::open(engine_heap(heap), name);
    s.impl_->name = std::string(name);
    return s;
}
Subscriber::Subscriber(Subscriber &&) noexcept = default;
Subscriber &Subscriber::operator=(Subscriber &&) noexcept = default;
Subscriber::~Subscriber() {
    // Stop receiving now (a publisher must not wait for us); Samples still held keep the
    // engine handle until they are released.
    if (impl_ && impl_->sub) {
        try {
            impl_->sub->close();
        } catch (...) {
        }
    }
}

namespace {
engine::TopicSubscriber &sub_of(const std::shared_ptr<Subscriber::Impl> &i) {
    if (!i || !i->sub || i->sub->closed())
        throw Closed("Subscriber is closed");
    return *i->sub;
}
} // namespace

Sample Subscriber::recv(WaitFor timeout) {
    engine::TopicSubscriber &s = sub_of(impl_);
    std::optional<engine::TopicSample> got = s.try_recv();
    if (!got)
        got = s.recv(to_deadline(timeout));
    Sample out;
    auto &si = ApiAccess::impl(out);
    si = std::make_unique<Sample::Impl>();
    si->sub = impl_;
    si->s = std::move(*got);
    si->data = static_cast<const std::byte *>(s.sample_ptr(si->s));
    if (si->s.meta.empty()) {
        si->info = ArrayInfo{"|u1", {static_cast<std::int64_t>(si->s.length)}, false};
    } else {
        std::uint64_t start = 0;
        si->info = codec::decode_array(si->s.meta, start, "topic sample");
        if (start > si->s.length || si->info.nbytes() > si->s.length - start)
            throw CorruptSegment("topic '" + impl_->name +
                                 "' delivered an array sample larger than its block");
        si->start = static_cast<std::size_t>(start);
        si->array = true;
    }
    return out;
}
bool Subscriber::poll(WaitFor timeout) {
    return sub_of(impl_).poll(to_deadline(timeout));
}
std::size_t Subscriber::pending() const {
    return static_cast<std::size_t>(sub_of(impl_).pending());
}
std::uint64_t Subscriber::missed() const {
    return sub_of(impl_).missed();
}
const std::string &Subscriber::name() const {
    if (!impl_)
        throw Closed("Subscriber is closed");
    return impl_->name;
}
void Subscriber::close() {
    if (impl_ && impl_->sub)
        impl_->sub->close();
}
bool Subscriber::closed() const noexcept {
    return !impl_ || !impl_->sub || impl_->sub->closed();
}

} // namespace v1
} // namespace shmipc
