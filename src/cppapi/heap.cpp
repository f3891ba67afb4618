// shmipc::Heap, Block and Channel over the engine's heap/ and channel/ (the calls the Python
// binding makes: src/bindings/bind_heap.cpp, bind_channel.cpp).
#include "internal.hpp"

namespace shmipc {
inline namespace v1 {

namespace {
engine::Heap &heap_of(const std::shared_ptr<Heap::Impl> &h) {
    if (!h || !h->heap)
        throw Closed("Heap is closed");
    return *h->heap;
}
engine::Channel &channel_of(const std::unique_ptr<Channel::Impl> &c) {
    if (!c || !c->ch || c->ch->closed())
        throw Closed("Channel is closed");
    return *c->ch;
}
} // namespace

// --- Block ----------------------------------------------------------------------------------

Block ApiAccess::make_block(std::shared_ptr<Heap::Impl> h, std::uint64_t off, std::size_t n) {
    Block b;
    b.impl_ = std::make_unique<Block::Impl>();
    b.impl_->heap = std::move(h);
    b.impl_->offset = off;
    b.impl_->nbytes = n;
    return b;
}

Block::Block() noexcept = default;
Block::Block(Block &&) noexcept = default;
Block &Block::operator=(Block &&) noexcept = default;
Block::~Block() = default;

std::span<std::byte> Block::bytes() const {
    if (!impl_)
        throw Closed("Block is released");
    auto *p = static_cast<std::byte *>(heap_of(impl_->heap).to_ptr(impl_->offset));
    return {p, impl_->nbytes};
}
std::size_t Block::nbytes() const noexcept {
    return impl_ ? impl_->nbytes : 0;
}
std::uint64_t Block::offset() const noexcept {
    return impl_ ? impl_->offset : 0;
}
bool Block::released() const noexcept {
    return !impl_;
}
void Block::release() noexcept {
    impl_.reset();
}

// --- Heap -----------------------------------------------------------------------------------

namespace {
engine::HeapOptions engine_options(const HeapOptions &o) {
    engine::HeapOptions e;
    e.size = o.size;
    e.max_size = o.max_size;
    e.mode = o.mode;
    e.persistent = o.persistent;
    return e;
}
} // namespace

Heap Heap::create(std::string_view name, const HeapOptions &options) {
    Heap h;
    h.impl_ = std::make_shared<Impl>();
    h.impl_->heap = engine::Heap::create(name, engine_options(options));
    return h;
}
Heap Heap::attach(std::string_view name) {
    Heap h;
    h.impl_ = std::make_shared<Impl>();
    h.impl_->heap = engine::Heap::attach(name);
    return h;
}
Heap::Heap(Heap &&) noexcept = default;
Heap &Heap::operator=(Heap &&) noexcept = default;
Heap::~Heap() = default;

Block Heap::allocate(std::size_t nbytes, std::size_t align) {
    if (nbytes == 0)
        throw InvalidArgument("a Block needs nbytes >= 1, got 0");
    std::uint64_t off = heap_of(impl_).allocate(nbytes, align);
    return ApiAccess::make_block(impl_, off, nbytes);
}

Channel Heap::channel(std::string_view name, std::size_t capacity) {
    Channel c = ApiAccess::make_channel();
    auto &ci = ApiAccess::impl(c);
    ci = std::make_unique<Channel::Impl>();
    ci->heap = impl_;
    ci->ch = engine::Channel::open(heap_of(impl_), name, capacity);
    return c;
}

HeapStats Heap::stats() {
    auto s = heap_of(impl_).stats();
    return HeapStats{s.size, s.used, s.free, s.largest_free, s.segments, s.allocations};
}
const std::string &Heap::name() const {
    return heap_of(impl_).name();
}
void Heap::close() noexcept {
    impl_.reset();
}
bool Heap::closed() const noexcept {
    return !impl_;
}

// --- Channel --------------------------------------------------------------------------------

Channel::Channel(Channel &&) noexcept = default;
Channel &Channel::operator=(Channel &&) noexcept = default;
Channel::~Channel() = default; // the engine's destructor: a departure (peer: PeerDied)

namespace {
// Moves a Block of the channel's heap into a record; the Block is released only on success.
void send_block(Channel::Impl &c, engine::Channel &ch, Block &blk, std::string_view meta,
                WaitFor timeout) {
    auto &bi = ApiAccess::impl(blk);
    if (!bi)
        throw Closed("Block is released");
    if (bi->heap != c.heap)
        throw InvalidArgument("not a Block of this channel's heap handle");
    // The block is owned by this client until the channel takes it (the engine gives it back
    // on any failure, so the Block stays valid then).
    ch.send_block(bi->offset, bi->nbytes, meta.empty() ? RecordKind::Block : RecordKind::Array,
                  meta, to_deadline(timeout));
    bi->heap.reset(); // the receiver's now: forget without freeing
    bi.reset();
}
} // namespace

void Channel::send(Block &&blk, WaitFor timeout) {
    send_block(*impl_, channel_of(impl_), blk, {}, timeout);
}
void Channel::send(std::span<const std::byte> bytes, WaitFor timeout) {
    channel_of(impl_).send_bytes(bytes.data(), bytes.size(), RecordKind::Block, {},
                                 to_deadline(timeout));
}
void Channel::send(std::string_view bytes, WaitFor timeout) {
    send(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())), timeout);
}
void Channel::send_array(std::span<const std::byte> bytes, const ArrayInfo &info, WaitFor timeout) {
    codec::check_array(info, bytes.size(), "send_array");
    std::string meta = codec::encode_array(info, 0);
    channel_of(impl_).send_bytes(bytes.data(), info.nbytes(), RecordKind::Array, meta,
                                 to_deadline(timeout));
}
void Channel::send_array(Block &&blk, const ArrayInfo &info, WaitFor timeout) {
    codec::check_array(info, blk.nbytes(), "send_array");
    send_block(*impl_, channel_of(impl_), blk, codec::encode_array(info, 0), timeout);
}

namespace {
ChannelMessage recv_message(engine::Channel &ch, WaitFor timeout) {
    if (auto m = ch.try_recv())
        return std::move(*m);
    return ch.recv(to_deadline(timeout));
}
} // namespace

Block Channel::recv(WaitFor timeout) {
    ChannelMessage m = recv_message(channel_of(impl_), timeout);
    return ApiAccess::make_block(impl_->heap, m.offset, static_cast<std::size_t>(m.length));
}

ArrayBlock Channel::recv_array(WaitFor timeout) {
    ChannelMessage m = recv_message(channel_of(impl_), timeout);
    ArrayBlock out;
    out.block = ApiAccess::make_block(impl_->heap, m.offset, static_cast<std::size_t>(m.length));
    if (m.kind != RecordKind::Array || m.meta.empty()) {
        // Python's recv_array: a plain record reads as 1-D uint8.
        out.info = ArrayInfo{"|u1", {static_cast<std::int64_t>(m.length)}, false};
        return out;
    }
    std::uint64_t start = 0;
    out.info = codec::decode_array(m.meta, start, "channel record");
    std::size_t need = out.info.nbytes();
    if (start > m.length || need > m.length - start)
        throw CorruptSegment("channel '" + name() + "': an array of " + std::to_string(need) +
                             " bytes at " + std::to_string(start) + " in a record of " +
                             std::to_string(m.length));
    out.offset = static_cast<std::size_t>(start);
    return out;
}

void Channel::set_spin(std::chrono::nanoseconds spin) {
    if (spin.count() < 0)
        throw InvalidArgument("spin must be >= 0");
    channel_of(impl_).set_spin(spin);
}
bool Channel::poll(WaitFor timeout) {
    return channel_of(impl_).poll(to_deadline(timeout));
}
std::size_t Channel::size() const {
    return channel_of(impl_).queued();
}
std::size_t Channel::capacity() const {
    return channel_of(impl_).capacity();
}
const std::string &Channel::name() const {
    return channel_of(impl_).name();
}
void Channel::close() {
    if (!impl_ || !impl_->ch || impl_->ch->closed())
        return;
    impl_->ch->close(); // as Python's close(): a sender ends the stream
    impl_->ch.reset();
}
bool Channel::closed() const noexcept {
    return !impl_ || !impl_->ch || impl_->ch->closed();
}

} // namespace v1
} // namespace shmipc
