// Topics (topic.hpp): the heap's topics as a whole: list_topics (heap.topics()) and
// remove_topic, which frees a topic's samples and control block once no endpoint is alive.
#include "ipc_core/topic/topic_ref.hpp"

#include "ipc_core/base/errors.hpp"

#include <string>
#include <utility>
#include <vector>

namespace shmipc {

using topic_detail::TopicRef;

std::vector<TopicInfo> list_topics(Heap &heap) {
    std::vector<TopicInfo> out;
    for (const NamedInfo &n : heap.list_named(kNamedTopic)) {
        std::unique_ptr<TopicRef> t;
        try {
            t = TopicRef::open(heap, n.name, nullptr);
        } catch (const std::exception &) {
            continue; // gone meanwhile, or corrupt: an error for whoever opens it
        }
        TopicInfo info;
        info.name = n.name;
        info.capacity = t->g.capacity;
        info.history = t->g.history;
        info.overflow = t->g.overflow;
        info.max_subscribers = t->g.max_subscribers;
        try {
            // SYNC POINT: the topic lock (acquire/release, robust: a dead holder's change is
            // recovered first): reaping changes the subscriber slots.
            auto lk = t->lock(Deadline(1.0));
            (void)t->reap_dead_locked(false);
        } catch (const Timeout &) {
        }
        for (std::uint32_t i = 0; i < t->g.max_subscribers; ++i)
            info.subscribers += t->sub(i).state.load(std::memory_order_relaxed) == kSubLive;
        // SYNC POINT: acquire, pairs with the release stores of pub_state in
        // TopicPublisher::claim(), close() and the destructor: the pub_token stored before it is
        // seen.
        const std::uint32_t st = t->ctl->pub_state.load(std::memory_order_acquire);
        info.publisher_alive = st == kPubLive && t->holder_alive(t->ctl->pub_token.load());
        info.closed = st == kPubClosed;
        info.published = t->ctl->head.load(std::memory_order_relaxed);
        out.push_back(std::move(info));
    }
    return out;
}

bool remove_topic(Heap &heap, std::string_view name, const Deadline &deadline) {
    auto info = heap.find_named(name);
    if (!info)
        return false;
    if (info->kind != kNamedTopic)
        throw InvalidArgument("'" + std::string(name) + "' is not a topic");
    auto t = TopicRef::open(heap, name, nullptr);
    {
        // SYNC POINT: the topic lock (acquire/release): no publish or receive is half-way while the
        // topic is removed.
        auto lk = t->lock(deadline);
        (void)t->reap_dead_locked(false);
        for (std::uint32_t i = 0; i < t->g.max_subscribers; ++i)
            if (t->sub(i).state.load(std::memory_order_relaxed) != kSubFree)
                throw ChannelBusy(t->what() + " still has a subscriber (close it first)");
        const std::uint32_t st = t->ctl->pub_state.load(std::memory_order_relaxed);
        if (st == kPubLive && t->holder_alive(t->ctl->pub_token.load()))
            throw ChannelBusy(t->what() + " still has a live publisher (close it first)");
        const std::uint64_t head = t->ctl->head.load(std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < t->g.slots; ++i) {
            TopicSlot &s = reinterpret_cast<TopicSlot *>(t->ctl + 1)[i];
            const std::uint64_t seq = s.seq.exchange(kNoSeq, std::memory_order_relaxed);
            if (seq == kNoSeq || seq >= head || head - seq > t->g.slots)
                continue;
            try {
                t->drop_ref(s.sample.load(std::memory_order_relaxed));
            } catch (const CorruptSegment &) {
            }
        }
        t->ctl->magic = 0; // a handle still open on it fails instead of using freed memory
    }
    return heap.remove_named(name, deadline);
}

} // namespace shmipc
