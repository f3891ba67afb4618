#include "ipc_core/base/array_descriptor.hpp"
#include "ipc_core/base/errors.hpp"

#include <cstring>
#include <gtest/gtest.h>
#include <random>
#include <string>

using namespace shmipc;

TEST(ArrayDescriptor, round_trips_plain_and_structured_dtypes) {
    ArrayDescriptor a{"<f4", {1080, 1920, 3}, 64, false, false};
    EXPECT_EQ(decode_array_descriptor(encode_array_descriptor(a)), a);
    ArrayDescriptor b{"[[\"x\", \"<i4\"], [\"y\", \"<f8\"]]", {7}, 0, true, true};
    EXPECT_EQ(decode_array_descriptor(encode_array_descriptor(b)), b);
    ArrayDescriptor scalar{"<M8[ns]", {}, 0, false, false};
    EXPECT_EQ(decode_array_descriptor(encode_array_descriptor(scalar)), scalar);
}

TEST(ArrayDescriptor, encodes_the_documented_layout) {
    std::string s = encode_array_descriptor({"|u1", {2, 3}, 8, true, false});
    ASSERT_EQ(s.size(), 16u + 16u + 3u);
    EXPECT_EQ(s[0], 1);  // version
    EXPECT_EQ(s[1], 1);  // Fortran
    EXPECT_EQ(s[2], 2);  // ndim
    EXPECT_EQ(s[4], 3);  // dtype_len (low byte)
    EXPECT_EQ(s[8], 8);  // offset (low byte)
    EXPECT_EQ(s[16], 2); // shape[0]
    EXPECT_EQ(s[24], 3); // shape[1]
    EXPECT_EQ(s.substr(32), "|u1");
}

TEST(ArrayDescriptor, malformed_input_is_a_corrupt_segment) {
    std::string good = encode_array_descriptor({"<i8", {4}, 0, false, false});
    EXPECT_THROW((void)decode_array_descriptor(good.substr(0, 10)), CorruptSegment);
    EXPECT_THROW((void)decode_array_descriptor(good + "x"), CorruptSegment);
    std::string bad = good;
    bad[0] = 2; // version
    EXPECT_THROW((void)decode_array_descriptor(bad), CorruptSegment);
    bad = good;
    bad[1] = 4; // unknown flag
    EXPECT_THROW((void)decode_array_descriptor(bad), CorruptSegment);
    bad = good;
    bad[2] = 65; // ndim beyond the limit
    EXPECT_THROW((void)decode_array_descriptor(bad), CorruptSegment);
    bad = good;
    bad[23] = static_cast<char>(0x80); // shape[0] negative
    EXPECT_THROW((void)decode_array_descriptor(bad), CorruptSegment);
    for (const char *dt : {"f4", "<f", "<4", "<f4[", "<f4[]", "<f4[n/s]", "<f1234567890", "'os'"}) {
        std::string s = good.substr(0, 4);
        std::uint32_t len = static_cast<std::uint32_t>(std::strlen(dt));
        s.append(reinterpret_cast<const char *>(&len), 4);
        s += good.substr(8, 16); // offset + shape[0]
        s += dt;
        EXPECT_THROW((void)decode_array_descriptor(s), CorruptSegment) << dt;
    }
}

TEST(ArrayDescriptor, the_length_of_a_descriptor_followed_by_data_is_read_from_its_header) {
    std::string good = encode_array_descriptor({"<f8", {3, 4}, 48, false, false});
    EXPECT_EQ(array_descriptor_length(good), good.size());
    EXPECT_EQ(array_descriptor_length(good + std::string(96, 'x')), good.size());
    EXPECT_THROW((void)array_descriptor_length(good.substr(0, 15)), CorruptSegment);
    EXPECT_THROW((void)array_descriptor_length(good.substr(0, good.size() - 1)), CorruptSegment);
    std::string bad = good;
    bad[0] = 0; // version
    EXPECT_THROW((void)array_descriptor_length(bad), CorruptSegment);
    bad = good;
    bad[2] = 65; // ndim beyond the limit
    EXPECT_THROW((void)array_descriptor_length(bad + std::string(1024, 'x')), CorruptSegment);
}

TEST(ArrayDescriptor, bad_arguments_cannot_be_encoded) {
    EXPECT_THROW((void)encode_array_descriptor({"", {1}, 0, false, false}), InvalidArgument);
    EXPECT_THROW((void)encode_array_descriptor({"<f4", {-1}, 0, false, false}), InvalidArgument);
    EXPECT_THROW(
        (void)encode_array_descriptor({"<f4", std::vector<std::int64_t>(65, 1), 0, false, false}),
        InvalidArgument);
}

TEST(ArrayDescriptor, random_bytes_never_crash_the_decoder) {
    std::mt19937 rng(7);
    std::string good = encode_array_descriptor({"<f8", {3, 4}, 0, false, false});
    for (int i = 0; i < 20000; ++i) {
        std::string s = good;
        int flips = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < flips; ++k)
            s[rng() % s.size()] = static_cast<char>(rng());
        if (rng() % 8 == 0)
            s.resize(rng() % (s.size() + 8));
        try {
            (void)decode_array_descriptor(s);
        } catch (const CorruptSegment &) {
        }
    }
}

TEST(ArrayDescriptor, itemsize_and_nbytes_of_plain_dtypes) {
    EXPECT_EQ(dtype_itemsize("<f8"), 8u);
    EXPECT_EQ(dtype_itemsize("|u1"), 1u);
    EXPECT_EQ(dtype_itemsize("<U4"), 16u);
    EXPECT_EQ(dtype_itemsize("<M8[ns]"), 8u);
    EXPECT_FALSE(dtype_itemsize("[[\"x\", \"<i4\"]]").has_value());
    EXPECT_EQ(array_nbytes({1080, 1920, 3}, 1), 1080u * 1920u * 3u);
    EXPECT_EQ(array_nbytes({}, 8), 8u);
    EXPECT_FALSE(array_nbytes({INT64_MAX, INT64_MAX}, 8).has_value());
}
