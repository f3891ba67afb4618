// The wire codecs of the public C++ API: each mirrors one function of the Python layer (named
// in internal.hpp), so either end of every object may be C++ or Python. Input from a peer is
// untrusted: every decoder checks lengths and syntax and throws CorruptSegment.
#include "internal.hpp"

#include <charconv>
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

[[noreturn]] void corrupt(const std::string &what) { throw CorruptSegment(what); }

template <class T> void put_le(std::string &out, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T)); // little endian on every platform shmipc supports (Linux x86/arm)
    out.append(b, sizeof(T));
}
template <class T> T get_le(std::string_view in, std::size_t at) {
    T v;
    std::memcpy(&v, in.data() + at, sizeof(T));
    return v;
}

bool parse_int(std::string_view s, std::int64_t &out) {
    if (s.empty())
        return false;
    auto r = std::from_chars(s.data(), s.data() + s.size(), out);
    return r.ec == std::errc() && r.ptr == s.data() + s.size();
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

std::string encode_buffer_desc(const ArrayInfo &a, std::uint64_t offset) {
    std::string out;
    put_le<std::uint8_t>(out, a.fortran ? 1 : 0);
    put_le<std::uint8_t>(out, static_cast<std::uint8_t>(a.shape.size()));
    put_le<std::uint64_t>(out, offset);
    for (auto d : a.shape)
        put_le<std::int64_t>(out, d);
    out += a.dtype;
    return out;
}

ArrayInfo decode_buffer_desc(std::string_view raw, std::uint64_t &offset) {
    if (raw.size() < 10)
        corrupt("bad array descriptor: " + std::to_string(raw.size()) + " bytes");
    auto flags = get_le<std::uint8_t>(raw, 0);
    auto ndim = get_le<std::uint8_t>(raw, 1);
    offset = get_le<std::uint64_t>(raw, 2);
    if (raw.size() < 10 + 8 * std::size_t{ndim})
        corrupt("bad array descriptor: short shape");
    ArrayInfo a;
    for (std::size_t i = 0; i < ndim; ++i) {
        auto d = get_le<std::int64_t>(raw, 10 + 8 * i);
        if (d < 0)
            corrupt("negative dimension in array descriptor");
        a.shape.push_back(d);
    }
    a.fortran = (flags & 1) != 0;
    a.dtype = std::string(raw.substr(10 + 8 * std::size_t{ndim}));
    if (flags & 2)
        corrupt("array descriptor: structured dtypes are Python-only");
    check_dtype_text(a.dtype, "array descriptor");
    return a;
}

std::string encode_channel_meta(const ArrayInfo &a, std::uint64_t start) {
    std::string out = "1|";
    for (std::size_t i = 0; i < a.shape.size(); ++i) {
        if (i)
            out += ',';
        out += std::to_string(a.shape[i]);
    }
    out += '|' + std::to_string(start) + '|' + (a.fortran ? "1" : "0") + "|s" + a.dtype;
    return out;
}

ArrayInfo decode_channel_meta(std::string_view raw, std::uint64_t &start) {
    std::string_view part[5];
    std::string_view rest = raw;
    for (int i = 0; i < 4; ++i) {
        auto bar = rest.find('|');
        if (bar == std::string_view::npos)
            corrupt("bad array metadata on a channel record");
        part[i] = rest.substr(0, bar);
        rest.remove_prefix(bar + 1);
    }
    part[4] = rest;
    if (part[0] != "1")
        corrupt("bad array metadata on a channel record: version " + std::string(part[0]));
    ArrayInfo a;
    std::string_view dims = part[1];
    while (!dims.empty()) {
        auto comma = dims.find(',');
        std::int64_t d = 0;
        if (!parse_int(dims.substr(0, comma), d) || d < 0)
            corrupt("bad array metadata on a channel record: shape");
        a.shape.push_back(d);
        if (comma == std::string_view::npos)
            break;
        dims.remove_prefix(comma + 1);
        if (dims.empty())
            corrupt("bad array metadata on a channel record: shape");
    }
    std::int64_t s = 0;
    if (!parse_int(part[2], s) || s < 0)
        corrupt("bad array metadata on a channel record: start");
    start = static_cast<std::uint64_t>(s);
    if (part[3] != "0" && part[3] != "1")
        corrupt("bad array metadata on a channel record: order");
    a.fortran = part[3] == "1";
    if (part[4].empty() || part[4][0] != 's')
        corrupt("channel record: structured dtypes are Python-only");
    a.dtype = std::string(part[4].substr(1));
    check_dtype_text(a.dtype, "channel record");
    return a;
}

std::string encode_value_meta(const ArrayInfo &a) {
    std::string out = "('" + a.dtype + "', (";
    for (std::size_t i = 0; i < a.shape.size(); ++i) {
        if (i)
            out += ", ";
        out += std::to_string(a.shape[i]);
    }
    if (a.shape.size() == 1)
        out += ',';
    out += "))";
    return out;
}

ArrayInfo decode_value_meta(std::string_view raw) {
    // Python writes repr((descr, shape)); a plain descr is a quoted dtype.str.
    auto bad = [&]() -> ArrayInfo {
        corrupt("undecodable array description " + std::string(raw.substr(0, 80)) +
                " (structured dtypes are Python-only)");
    };
    if (raw.size() < 6 || raw.substr(0, 2) != "('")
        return bad();
    auto q = raw.find('\'', 2);
    if (q == std::string_view::npos)
        return bad();
    ArrayInfo a;
    a.dtype = std::string(raw.substr(2, q - 2));
    std::string_view rest = raw.substr(q + 1);
    if (rest.substr(0, 3) != ", (" || rest.size() < 5 || rest.substr(rest.size() - 2) != "))")
        return bad();
    std::string_view dims = rest.substr(3, rest.size() - 5);
    while (!dims.empty()) {
        auto comma = dims.find(',');
        std::string_view tok = dims.substr(0, comma);
        while (!tok.empty() && tok.front() == ' ')
            tok.remove_prefix(1);
        std::int64_t d = 0;
        if (!parse_int(tok, d) || d < 0)
            return bad();
        a.shape.push_back(d);
        if (comma == std::string_view::npos)
            break;
        dims.remove_prefix(comma + 1);
    }
    check_dtype_text(a.dtype, "shared value");
    return a;
}

} // namespace codec
} // namespace v1
} // namespace shmipc
