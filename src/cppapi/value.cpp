// shmipc::SharedValue over the engine's value/ with the Python layer's type tags and array
// description (python/shmipc/_value.py).
#include "internal.hpp"

namespace shmipc {
inline namespace v1 {

namespace {
engine::SharedValue &value_of(const std::unique_ptr<SharedValue::Impl> &i) {
    if (!i || !i->v)
        throw Closed("SharedValue is closed");
    return *i->v;
}
std::span<const std::byte> as_bytes(std::string_view s) {
    return std::as_bytes(std::span<const char>(s.data(), s.size()));
}
} // namespace

SharedValue SharedValue::create(std::string_view name, const ValueOptions &o) {
    SharedValue v;
    v.impl_ = std::make_unique<Impl>();
    v.impl_->v = engine::SharedValue::create(name, o.size, o.mode, o.persistent);
    return v;
}
SharedValue SharedValue::attach(std::string_view name) {
    SharedValue v;
    v.impl_ = std::make_unique<Impl>();
    v.impl_->v = engine::SharedValue::attach(name);
    return v;
}
SharedValue::SharedValue(SharedValue &&) noexcept = default;
SharedValue &SharedValue::operator=(SharedValue &&) noexcept = default;
SharedValue::~SharedValue() = default;

std::uint64_t SharedValue::write_bytes(std::span<const std::byte> bytes) {
    return value_of(impl_).write(kValueBytes, {}, bytes);
}
std::uint64_t SharedValue::write_text(std::string_view utf8) {
    return value_of(impl_).write(kValueText, {}, as_bytes(utf8));
}
std::uint64_t SharedValue::write_array(std::span<const std::byte> bytes, const ArrayInfo &info) {
    if (info.fortran)
        throw InvalidArgument("shared values hold arrays in C order (fortran=false)");
    codec::check_array(info, bytes.size(), "write_array");
    std::string meta = codec::encode_array(info, 0);
    return value_of(impl_).write(kValueArray, as_bytes(meta), bytes.first(info.nbytes()));
}

Value SharedValue::read() const {
    auto &v = value_of(impl_);
    Value out;
    ValueSnapshot s = v.read([&](const ValueSnapshot &snap) {
        out.data.resize(static_cast<std::size_t>(snap.nbytes));
        return out.data.data();
    });
    out.version = s.version;
    switch (s.type) {
    case 0:
        out.kind = Value::Kind::None;
        break;
    case kValueBytes:
        out.kind = Value::Kind::Bytes;
        break;
    case kValueText:
        out.kind = Value::Kind::Text;
        break;
    case kValueArray: {
        out.kind = Value::Kind::Array;
        std::uint64_t offset = 0;
        out.array = codec::decode_array(s.meta, offset, "shared value");
        if (offset != 0 || out.array.fortran)
            throw CorruptSegment("shared value '" + v.name() +
                                 "': an array descriptor with an offset or in Fortran order");
        if (out.array.nbytes() != out.data.size())
            throw CorruptSegment("shared value '" + v.name() + "': an array of " +
                                 std::to_string(out.array.nbytes()) + " bytes holds " +
                                 std::to_string(out.data.size()));
        break;
    }
    default:
        throw CorruptSegment("unknown value type tag " + std::to_string(s.type));
    }
    return out;
}

std::uint64_t SharedValue::version() const {
    return value_of(impl_).version();
}
bool SharedValue::wait(std::uint64_t since, WaitFor timeout) const {
    return value_of(impl_).wait(since, to_deadline(timeout));
}
std::size_t SharedValue::size() const {
    return value_of(impl_).capacity();
}
const std::string &SharedValue::name() const {
    return value_of(impl_).name();
}
void SharedValue::close() noexcept {
    impl_.reset();
}
bool SharedValue::closed() const noexcept {
    return !impl_;
}

} // namespace v1
} // namespace shmipc
