// The wire codecs of the public C++ API: each mirrors one function of the Python layer (named
// in internal.hpp), so either end of every object may be C++ or Python. Input from a peer is
// untrusted: every decoder checks lengths and syntax and throws CorruptSegment.
#include "internal.hpp"

#include <cstring>

namespace shmipc {
inline namespace v1 {

std::size_t ArrayInfo::itemsize() const {
    auto n = dtype_itemsize(dtype);
    if (!n)
        throw InvalidArgument("dtype '" + dtype.substr(0, 80) +
                              "' is not a plain NumPy dtype string such as '<f4'");
    return *n;
}

std::size_t ArrayInfo::size() const {
    std::uint64_t n = 1;
    for (auto d : shape) {
        if (d < 0)
            throw InvalidArgument("negative dimension in an array shape");
        if (d != 0 && n > UINT64_MAX / static_cast<std::uint64_t>(d))
            throw InvalidArgument("array shape overflows 64 bits");
        n *= static_cast<std::uint64_t>(d);
    }
    return static_cast<std::size_t>(n);
}

Meta Meta::json(std::string_view json_object) {
    std::size_t a = json_object.find_first_not_of(" \t\r\n");
    std::size_t b = json_object.find_last_not_of(" \t\r\n");
    if (a == std::string_view::npos || json_object[a] != '{' || json_object[b] != '}')
        throw InvalidArgument("Meta::json takes the text of a JSON object ('{...}')");
    return {Kind::Json, std::string(json_object)};
}

namespace codec {
namespace {

[[noreturn]] void corrupt(const std::string &what) {
    throw CorruptSegment(what);
}

template <class T> void put_le(std::string &out, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v,
                sizeof(T)); // little endian on every platform shmipc supports (Linux x86/arm)
    out.append(b, sizeof(T));
}
template <class T> T get_le(std::string_view in, std::size_t at) {
    T v;
    std::memcpy(&v, in.data() + at, sizeof(T));
    return v;
}

void check_dtype_text(std::string_view d, const char *what) {
    if (!dtype_itemsize(d))
        corrupt(std::string(what) + ": dtype '" + std::string(d.substr(0, 80)) +
                "' is not a plain dtype (structured dtypes are Python-only)");
}

} // namespace

void check_array(const ArrayInfo &a, std::size_t nbytes, const char *what) {
    std::size_t need = a.nbytes(); // InvalidArgument for a bad dtype or shape
    if (a.shape.size() > kMaxArrayDims)
        throw InvalidArgument(std::string(what) + ": more than 64 dimensions");
    if (need > nbytes)
        throw InvalidArgument(std::string(what) + ": shape needs " + std::to_string(need) +
                              " bytes, " + std::to_string(nbytes) + " given");
}

std::string encode_buffer_meta(const Meta &m) {
    if (m.kind == Meta::Kind::None)
        return {};
    if (m.data.size() > kMaxMetaBytes - 1)
        throw InvalidArgument("meta is " + std::to_string(m.data.size()) +
                              " bytes; at most 65535 may travel with a buffer");
    return (m.kind == Meta::Kind::Bytes ? "B" : "J") + m.data;
}

Meta decode_buffer_meta(std::string_view raw) {
    if (raw.empty())
        return {};
    if (raw[0] == 'B')
        return {Meta::Kind::Bytes, std::string(raw.substr(1))};
    if (raw[0] == 'J')
        return {Meta::Kind::Json, std::string(raw.substr(1))};
    corrupt("unknown meta encoding");
}

std::string encode_array(const ArrayInfo &a, std::uint64_t offset) {
    ArrayDescriptor d;
    d.dtype = a.dtype;
    d.shape = a.shape;
    d.offset = offset;
    d.fortran = a.fortran;
    return encode_array_descriptor(d);
}

ArrayInfo decode_array(std::string_view raw, std::uint64_t &offset, const char *what) {
    ArrayDescriptor d = decode_array_descriptor(raw); // CorruptSegment if malformed
    if (d.structured)
        corrupt(std::string(what) + ": structured dtypes are Python-only");
    check_dtype_text(d.dtype, what);
    offset = d.offset;
    return ArrayInfo{std::move(d.dtype), std::move(d.shape), d.fortran};
}

} // namespace codec
} // namespace v1
} // namespace shmipc
