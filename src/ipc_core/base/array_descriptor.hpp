// The one description of an n-dimensional array that travels with array data: fd messages
// (send_array), channel records (recv_array), shared values and dict entries, from Python and
// from C++ alike. Untrusted on decode: every field is checked, nothing is read past the input.
//
// Wire format, little endian, version 1 (kArrayDescriptorVersion):
//
//   offset  size      field
//   0       1         version            1
//   1       1         flags              bit 0: Fortran order; bit 1: `dtype` is a structured
//                                        NumPy descr as JSON (else a plain dtype string)
//   2       1         ndim               0..kMaxArrayDims
//   3       1         reserved           0
//   4       4         dtype_len          bytes of `dtype`, 1..kMaxDtypeBytes
//   8       8         offset             bytes from the start of the payload to element 0
//   16      8 * ndim  shape              int64, each >= 0
//   16+8*ndim dtype_len dtype            ASCII: NumPy's dtype.str ("<f4", "|u1", "<M8[ns]", "<U8")
//                                        or, with flag bit 1, the JSON of dtype_to_descr()
//
// Nothing follows: the total length is exactly 16 + 8 * ndim + dtype_len.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmipc {

inline constexpr std::uint8_t kArrayDescriptorVersion = 1;
inline constexpr std::size_t kMaxArrayDims = 64;        // NumPy 2's NPY_MAXDIMS
inline constexpr std::size_t kMaxDtypeBytes = 16384;    // a structured descr can be long
inline constexpr std::size_t kArrayDescriptorHead = 16; // bytes before the shape
inline constexpr std::uint8_t kArrayFortran = 1;
inline constexpr std::uint8_t kArrayStructured = 2;

struct ArrayDescriptor {
    std::string dtype;               // see above
    std::vector<std::int64_t> shape; // each >= 0
    std::uint64_t offset = 0;        // bytes, into the payload
    bool fortran = false;            // column-major element order
    bool structured = false;         // dtype is a JSON descr

    friend bool operator==(const ArrayDescriptor &, const ArrayDescriptor &) = default;
};

// InvalidArgument if the descriptor cannot be encoded (ndim, dtype length, negative dimension).
[[nodiscard]] std::string encode_array_descriptor(const ArrayDescriptor &d);

// CorruptSegment for anything malformed: short or long input, unknown version or flags,
// ndim > kMaxArrayDims, negative dimension, a plain dtype that is not of the form
// [<>|=] kind digits [unit] (unit: 1..8 alphanumerics in brackets), a structured dtype that is
// not printable ASCII.
[[nodiscard]] ArrayDescriptor decode_array_descriptor(std::string_view bytes);

// The length of the descriptor that starts `bytes` (followed by anything, e.g. the array data
// of a dict entry), read from its header: 16 + 8 * ndim + dtype_len. CorruptSegment if `bytes`
// is shorter than the header or than that length, or the header is malformed (as for decode).
[[nodiscard]] std::size_t array_descriptor_length(std::string_view bytes);

// Bytes per element of a plain dtype string ("<f8" -> 8; "<U4" -> 16: 4 UCS-4 characters),
// nullopt for a structured one or a malformed string.
[[nodiscard]] std::optional<std::size_t> dtype_itemsize(std::string_view dtype);

// Elements of `shape` times `itemsize`, nullopt on overflow of 64 bits.
[[nodiscard]] std::optional<std::uint64_t> array_nbytes(const std::vector<std::int64_t> &shape,
                                                        std::size_t itemsize);

} // namespace shmipc
