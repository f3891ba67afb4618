// shmipc::MessageQueue over the engine's queue/ (the calls of src/bindings/bind_queue.cpp's
// put_bytes / get_bytes).
#include "internal.hpp"

namespace shmipc {
inline namespace v1 {

namespace {
engine::MessageQueue &queue_of(const std::unique_ptr<MessageQueue::Impl> &i) {
    if (!i || !i->q.is_open())
        throw Closed("MessageQueue is closed");
    return i->q;
}
bool to_vector(void *ctx, const std::byte *data, std::size_t n) {
    static_cast<std::vector<std::byte> *>(ctx)->assign(data, data + n);
    return true;
}
} // namespace

MessageQueue MessageQueue::create(std::string_view name, const QueueOptions &o) {
    MessageQueue q;
    q.impl_ = std::make_unique<Impl>();
    q.impl_->q =
        engine::MessageQueue::create(name, o.maxsize, o.max_message_size, o.mode, o.persistent);
    return q;
}
MessageQueue MessageQueue::attach(std::string_view name) {
    MessageQueue q;
    q.impl_ = std::make_unique<Impl>();
    q.impl_->q = engine::MessageQueue::attach(name);
    return q;
}
MessageQueue::MessageQueue(MessageQueue &&) noexcept = default;
MessageQueue &MessageQueue::operator=(MessageQueue &&) noexcept = default;
MessageQueue::~MessageQueue() = default;

bool MessageQueue::try_put(std::span<const std::byte> m) {
    return queue_of(impl_).try_put(m.data(), m.size());
}

void MessageQueue::put(std::span<const std::byte> m, WaitFor timeout) {
    auto &q = queue_of(impl_);
    if (q.try_put(m.data(), m.size()))
        return;
    Deadline dl = to_deadline(timeout);
    for (;;) {
        auto r = q.wait_put_ready(dl);
        if (q.try_put(m.data(), m.size()))
            return;
        if (r == engine::MessageQueue::WaitResult::Timeout || dl.expired())
            throw Timeout("MessageQueue '" + q.name() + "' is full");
    }
}
void MessageQueue::put(std::string_view m, WaitFor timeout) {
    put(std::as_bytes(std::span<const char>(m.data(), m.size())), timeout);
}

std::optional<std::vector<std::byte>> MessageQueue::try_get() {
    std::vector<std::byte> out;
    if (queue_of(impl_).try_get(&to_vector, &out))
        return out;
    return std::nullopt;
}

std::vector<std::byte> MessageQueue::get(WaitFor timeout) {
    auto &q = queue_of(impl_);
    std::vector<std::byte> out;
    if (q.try_get(&to_vector, &out))
        return out;
    Deadline dl = to_deadline(timeout);
    for (;;) {
        auto r = q.wait_get_ready(dl);
        if (r == engine::MessageQueue::WaitResult::Timeout || dl.expired()) {
            // A last look for the message of a consumer that died holding it.
            struct Got {
                std::vector<std::byte> *out;
                bool got;
            } g{&out, false};
            q.recover(
                [](void *ctx, const std::byte *data, std::size_t n) {
                    auto *p = static_cast<Got *>(ctx);
                    p->out->assign(data, data + n);
                    p->got = true;
                    return true;
                },
                &g);
            if (g.got)
                return out;
            if (q.try_get(&to_vector, &out))
                return out;
            throw Timeout("MessageQueue '" + q.name() + "' is empty");
        }
        if (q.try_get(&to_vector, &out))
            return out;
    }
}
std::string MessageQueue::get_string(WaitFor timeout) {
    auto v = get(timeout);
    return {reinterpret_cast<const char *>(v.data()), v.size()};
}

std::size_t MessageQueue::size() const {
    return queue_of(impl_).size();
}
std::size_t MessageQueue::maxsize() const {
    return queue_of(impl_).capacity();
}
std::size_t MessageQueue::max_message_size() const {
    return queue_of(impl_).max_message_size();
}
const std::string &MessageQueue::name() const {
    return queue_of(impl_).name();
}
void MessageQueue::close() noexcept {
    if (impl_)
        impl_->q.close();
    impl_.reset();
}
bool MessageQueue::closed() const noexcept {
    return !impl_;
}

} // namespace v1
} // namespace shmipc
