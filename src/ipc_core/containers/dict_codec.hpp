// The value codec of SharedDict entries (containers/shared_dict.hpp stores a tag byte and the
// value's bytes; this says what they mean). The one definition, for the Python layer (through
// src/bindings/bind_dict.cpp) and any other user. Decoding is of untrusted shared memory:
// every length is checked, a malformed value is CorruptSegment.
//
//   tag  type        value bytes
//   1    bytes       the bytes
//   2    str         UTF-8
//   3    int         int64, little endian
//   4    float       IEEE double, little endian
//   5    bool        one byte, 0 or 1
//   16   big int     an integer beyond int64: two's complement, little endian, at least one
//                    byte (Python: int.to_bytes((n.bit_length() + 8) // 8, "little",
//                    signed=True), not always the fewest bytes)
//   17   ndarray     the array descriptor (base/array_descriptor.hpp) whose offset is where the
//                    data starts (the descriptor's length rounded up to 16: data 16-byte aligned
//                    in the entry), zeros up to there, then the C-ordered elements
//
// Other tags are a newer writer's: readers refuse them (UsageError, not corruption).
#pragma once

#include "ipc_core/base/array_descriptor.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace shmipc::dict_codec {

enum Tag : std::uint8_t {
    kBytes = 1,
    kStr = 2,
    kInt = 3,
    kFloat = 4,
    kBool = 5,
    kBigInt = 16,
    kArray = 17,
};
inline constexpr std::size_t kArrayDataAlign = 16;

[[nodiscard]] std::string encode_int(std::int64_t v);
[[nodiscard]] std::string encode_float(double v);
[[nodiscard]] std::string encode_bool(bool v);
// CorruptSegment unless `value` has the size of its type (and a bool is 0 or 1).
[[nodiscard]] std::int64_t decode_int(std::string_view value);
[[nodiscard]] double decode_float(std::string_view value);
[[nodiscard]] bool decode_bool(std::string_view value);
// CorruptSegment for an empty value.
void check_big_int(std::string_view value);

// The bytes of an array entry before its elements: `d` (its offset set to where they start),
// then zeros up to there. InvalidArgument as encode_array_descriptor, or for Fortran order.
[[nodiscard]] std::string array_entry_head(ArrayDescriptor d);
// The descriptor of the array entry `value` (its offset: where the elements start).
// CorruptSegment for a malformed descriptor, elements that start inside it or unaligned, Fortran
// order, or (for a plain dtype, whose size is known) elements that are not exactly the rest.
[[nodiscard]] ArrayDescriptor decode_array_entry(std::string_view value);

} // namespace shmipc::dict_codec
