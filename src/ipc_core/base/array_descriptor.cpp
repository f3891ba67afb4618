#include "ipc_core/base/array_descriptor.hpp"

#include "ipc_core/base/errors.hpp"

#include <bit>
#include <climits>
#include <cstring>

namespace shmipc {

namespace {

template <class T> void put(std::string &out, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T)); // little-endian hosts only (static_assert below)
    out.append(b, sizeof(T));
}

template <class T> T get(std::string_view in, std::size_t at) {
    T v;
    std::memcpy(&v, in.data() + at, sizeof(T));
    return v;
}

static_assert(std::endian::native == std::endian::little, "the wire format is little endian");

bool is_alnum(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// [<>|=] letter digits{1,9} ([unit])?  -- what NumPy's dtype.str looks like.
bool plain_dtype_ok(std::string_view s) {
    if (s.size() < 3 || std::string_view("<>|=").find(s[0]) == std::string_view::npos)
        return false;
    if (!((s[1] >= 'a' && s[1] <= 'z') || (s[1] >= 'A' && s[1] <= 'Z')))
        return false;
    std::size_t i = 2, digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && digits < 10) {
        ++i;
        ++digits;
    }
    if (digits == 0 || digits > 9)
        return false;
    if (i == s.size())
        return true;
    if (s[i] != '[' || s.back() != ']')
        return false;
    std::string_view unit = s.substr(i + 1, s.size() - i - 2);
    if (unit.empty() || unit.size() > 8)
        return false;
    for (char c : unit)
        if (!is_alnum(c))
            return false;
    return true;
}

bool printable_ascii(std::string_view s) {
    for (char c : s)
        if (c < 0x20 || c > 0x7e)
            return false;
    return true;
}

[[noreturn]] void corrupt(const std::string &why) {
    throw CorruptSegment("bad array descriptor: " + why);
}

} // namespace

std::string encode_array_descriptor(const ArrayDescriptor &d) {
    if (d.shape.size() > kMaxArrayDims)
        throw InvalidArgument("an array descriptor holds at most " + std::to_string(kMaxArrayDims) +
                              " dimensions, got " + std::to_string(d.shape.size()));
    if (d.dtype.empty() || d.dtype.size() > kMaxDtypeBytes)
        throw InvalidArgument("dtype description of " + std::to_string(d.dtype.size()) +
                              " bytes (1.." + std::to_string(kMaxDtypeBytes) + " allowed)");
    std::string out;
    out.reserve(kArrayDescriptorHead + 8 * d.shape.size() + d.dtype.size());
    put<std::uint8_t>(out, kArrayDescriptorVersion);
    put<std::uint8_t>(out, static_cast<std::uint8_t>((d.fortran ? kArrayFortran : 0) |
                                                     (d.structured ? kArrayStructured : 0)));
    put<std::uint8_t>(out, static_cast<std::uint8_t>(d.shape.size()));
    put<std::uint8_t>(out, 0);
    put<std::uint32_t>(out, static_cast<std::uint32_t>(d.dtype.size()));
    put<std::uint64_t>(out, d.offset);
    for (std::int64_t n : d.shape) {
        if (n < 0)
            throw InvalidArgument("negative dimension " + std::to_string(n));
        put<std::int64_t>(out, n);
    }
    out += d.dtype;
    return out;
}

ArrayDescriptor decode_array_descriptor(std::string_view in) {
    if (in.size() < kArrayDescriptorHead)
        corrupt(std::to_string(in.size()) + " bytes, shorter than its header");
    auto version = get<std::uint8_t>(in, 0);
    auto flags = get<std::uint8_t>(in, 1);
    std::size_t ndim = get<std::uint8_t>(in, 2);
    if (version != kArrayDescriptorVersion)
        corrupt("version " + std::to_string(version));
    if ((flags & ~(kArrayFortran | kArrayStructured)) != 0 || get<std::uint8_t>(in, 3) != 0)
        corrupt("unknown flags");
    if (ndim > kMaxArrayDims)
        corrupt(std::to_string(ndim) + " dimensions");
    std::size_t dtype_len = get<std::uint32_t>(in, 4);
    if (dtype_len == 0 || dtype_len > kMaxDtypeBytes)
        corrupt("dtype of " + std::to_string(dtype_len) + " bytes");
    if (in.size() != kArrayDescriptorHead + 8 * ndim + dtype_len)
        corrupt(std::to_string(in.size()) + " bytes for " + std::to_string(ndim) +
                " dimensions and a dtype of " + std::to_string(dtype_len) + " bytes");
    ArrayDescriptor d;
    d.fortran = (flags & kArrayFortran) != 0;
    d.structured = (flags & kArrayStructured) != 0;
    d.offset = get<std::uint64_t>(in, 8);
    d.shape.reserve(ndim);
    for (std::size_t i = 0; i < ndim; ++i) {
        auto n = get<std::int64_t>(in, kArrayDescriptorHead + 8 * i);
        if (n < 0)
            corrupt("negative dimension");
        d.shape.push_back(n);
    }
    d.dtype.assign(in.substr(kArrayDescriptorHead + 8 * ndim));
    if (d.structured ? !printable_ascii(d.dtype) : !plain_dtype_ok(d.dtype))
        corrupt("not a dtype description");
    return d;
}

std::size_t array_descriptor_length(std::string_view in) {
    if (in.size() < kArrayDescriptorHead)
        corrupt(std::to_string(in.size()) + " bytes, shorter than its header");
    std::size_t ndim = get<std::uint8_t>(in, 2);
    std::size_t dtype_len = get<std::uint32_t>(in, 4);
    if (get<std::uint8_t>(in, 0) != kArrayDescriptorVersion)
        corrupt("version " + std::to_string(get<std::uint8_t>(in, 0)));
    if (ndim > kMaxArrayDims || dtype_len == 0 || dtype_len > kMaxDtypeBytes)
        corrupt("header out of range");
    std::size_t n = kArrayDescriptorHead + 8 * ndim + dtype_len;
    if (in.size() < n)
        corrupt(std::to_string(in.size()) + " bytes for a descriptor of " + std::to_string(n));
    return n;
}

std::optional<std::size_t> dtype_itemsize(std::string_view dtype) {
    if (!plain_dtype_ok(dtype))
        return std::nullopt;
    std::size_t i = 2, n = 0;
    while (i < dtype.size() && dtype[i] >= '0' && dtype[i] <= '9')
        n = n * 10 + static_cast<std::size_t>(dtype[i++] - '0');
    return dtype[1] == 'U' ? n * 4 : n; // NumPy's U counts UCS-4 characters
}

std::optional<std::uint64_t> array_nbytes(const std::vector<std::int64_t> &shape,
                                          std::size_t itemsize) {
    std::uint64_t n = itemsize;
    for (std::int64_t d : shape) {
        if (d < 0)
            return std::nullopt;
        if (d != 0 && n > UINT64_MAX / static_cast<std::uint64_t>(d))
            return std::nullopt;
        n *= static_cast<std::uint64_t>(d);
    }
    return n;
}

} // namespace shmipc
