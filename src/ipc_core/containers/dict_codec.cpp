#include "ipc_core/containers/dict_codec.hpp"

#include "ipc_core/base/errors.hpp"

#include <bit>
#include <cstring>

namespace shmipc::dict_codec {

namespace {

static_assert(std::endian::native == std::endian::little, "the entries are little endian");

template <class T> std::string put(T v) {
    std::string out(sizeof(T), '\0');
    std::memcpy(out.data(), &v, sizeof(T));
    return out;
}

template <class T> T get(std::string_view value, const char *what) {
    if (value.size() != sizeof(T))
        throw CorruptSegment(std::string("SharedDict entry: ") + what + " of " +
                             std::to_string(value.size()) + " bytes");
    T v;
    std::memcpy(&v, value.data(), sizeof(T));
    return v;
}

std::size_t aligned(std::size_t n) {
    return (n + kArrayDataAlign - 1) / kArrayDataAlign * kArrayDataAlign;
}

} // namespace

std::string encode_int(std::int64_t v) {
    return put(v);
}
std::string encode_float(double v) {
    return put(v);
}
std::string encode_bool(bool v) {
    return put<std::uint8_t>(v ? 1 : 0);
}

std::int64_t decode_int(std::string_view value) {
    return get<std::int64_t>(value, "an int");
}
double decode_float(std::string_view value) {
    return get<double>(value, "a float");
}
bool decode_bool(std::string_view value) {
    auto b = get<std::uint8_t>(value, "a bool");
    if (b > 1)
        throw CorruptSegment("SharedDict entry: a bool of value " + std::to_string(b));
    return b == 1;
}

void check_big_int(std::string_view value) {
    if (value.empty())
        throw CorruptSegment("SharedDict entry: an empty big int");
}

std::string array_entry_head(ArrayDescriptor d) {
    if (d.fortran)
        throw InvalidArgument("SharedDict arrays are stored in C order");
    d.offset = 0;
    std::string head = encode_array_descriptor(d); // InvalidArgument for a bad descriptor
    d.offset = aligned(head.size());
    head = encode_array_descriptor(d); // the same length: the offset is a fixed field
    head.resize(d.offset, '\0');
    return head;
}

ArrayDescriptor decode_array_entry(std::string_view value) {
    std::size_t n = array_descriptor_length(value); // CorruptSegment if it does not fit
    ArrayDescriptor d = decode_array_descriptor(value.substr(0, n));
    if (d.offset < n || d.offset % kArrayDataAlign != 0 || d.offset > value.size())
        throw CorruptSegment("SharedDict entry: array elements at offset " +
                             std::to_string(d.offset) + " of " + std::to_string(value.size()));
    if (d.fortran)
        throw CorruptSegment("SharedDict entry: an array in Fortran order");
    if (!d.structured) {
        auto itemsize = dtype_itemsize(d.dtype);
        auto nbytes = itemsize ? array_nbytes(d.shape, *itemsize) : std::nullopt;
        if (!nbytes || *nbytes != value.size() - d.offset)
            throw CorruptSegment("SharedDict entry: an array whose elements are not its " +
                                 std::to_string(value.size() - d.offset) + " bytes");
    }
    return d;
}

} // namespace shmipc::dict_codec
