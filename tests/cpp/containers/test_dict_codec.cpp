#include "ipc_core/containers/dict_codec.hpp"

#include "ipc_core/base/errors.hpp"

#include <cstdint>
#include <gtest/gtest.h>
#include <limits>
#include <random>
#include <string>

using namespace shmipc;
using namespace shmipc::dict_codec;

TEST(DictCodec, fixed_size_values_round_trip_and_have_exactly_their_size) {
    for (std::int64_t v :
         {std::int64_t{0}, std::int64_t{-1}, std::numeric_limits<std::int64_t>::max(),
          std::numeric_limits<std::int64_t>::min()})
        EXPECT_EQ(decode_int(encode_int(v)), v);
    EXPECT_EQ(decode_float(encode_float(2.5)), 2.5);
    EXPECT_TRUE(decode_bool(encode_bool(true)));
    EXPECT_FALSE(decode_bool(encode_bool(false)));
    EXPECT_EQ(encode_int(1), std::string("\x01\0\0\0\0\0\0\0", 8)); // little endian
    EXPECT_THROW((void)decode_int("1234567"), CorruptSegment);
    EXPECT_THROW((void)decode_int("123456789"), CorruptSegment);
    EXPECT_THROW((void)decode_float(""), CorruptSegment);
    EXPECT_THROW((void)decode_bool("\x02"), CorruptSegment);
    EXPECT_THROW((void)decode_bool(std::string("\x01\x00", 2)), CorruptSegment);
}

TEST(DictCodec, a_big_int_has_at_least_one_byte) {
    EXPECT_NO_THROW(check_big_int(std::string("\x00\x00\x00\x00\x00\x00\x00\x80\x00", 9))); // 2^63
    EXPECT_NO_THROW(check_big_int(std::string("\x00\x00\x00\x00\x00\x00\x00\x00\x80\xff", 10)));
    EXPECT_THROW(check_big_int(""), CorruptSegment);
}

TEST(DictCodec, an_array_entry_has_its_elements_aligned_after_the_descriptor) {
    std::string head = array_entry_head({"<f8", {2, 3}, 999, false, false});
    ASSERT_EQ(head.size() % kArrayDataAlign, 0u);
    ArrayDescriptor d = decode_array_entry(head + std::string(48, 'x'));
    EXPECT_EQ(d.dtype, "<f8");
    EXPECT_EQ(d.shape, (std::vector<std::int64_t>{2, 3}));
    EXPECT_EQ(d.offset, head.size());
    EXPECT_GE(d.offset, array_descriptor_length(head));
    // A structured dtype's size is NumPy's to check: any number of element bytes decodes.
    std::string s = array_entry_head({"[[\"a\", \"<i4\"]]", {2}, 0, false, true});
    EXPECT_TRUE(decode_array_entry(s + "12345678").structured);
    EXPECT_THROW((void)array_entry_head({"<f8", {2}, 0, true, false}), InvalidArgument);
}

TEST(DictCodec, a_malformed_array_entry_is_a_corrupt_segment) {
    std::string head = array_entry_head({"<f8", {2}, 0, false, false});
    std::string good = head + std::string(16, 'x');
    EXPECT_NO_THROW((void)decode_array_entry(good));
    EXPECT_THROW((void)decode_array_entry(good.substr(0, good.size() - 1)), CorruptSegment);
    EXPECT_THROW((void)decode_array_entry(good + "x"), CorruptSegment);
    EXPECT_THROW((void)decode_array_entry(head.substr(0, 20)), CorruptSegment);
    auto with_offset = [&](std::uint64_t off) {
        ArrayDescriptor d{"<f8", {2}, off, false, false};
        std::string h = encode_array_descriptor(d);
        h.resize(head.size(), '\0');
        return h + std::string(16, 'x');
    };
    EXPECT_THROW((void)decode_array_entry(with_offset(0)), CorruptSegment);  // inside it
    EXPECT_THROW((void)decode_array_entry(with_offset(40)), CorruptSegment); // unaligned
    EXPECT_THROW((void)decode_array_entry(with_offset(1 << 20)), CorruptSegment);
    std::string fortran = good;
    fortran[1] = 1;
    EXPECT_THROW((void)decode_array_entry(fortran), CorruptSegment);
    std::mt19937 rng(3);
    for (int i = 0; i < 20000; ++i) {
        std::string s = good;
        for (int k = 0; k < 3; ++k)
            s[rng() % s.size()] = static_cast<char>(rng());
        try {
            (void)decode_array_entry(s);
        } catch (const CorruptSegment &) {
        }
    }
}
