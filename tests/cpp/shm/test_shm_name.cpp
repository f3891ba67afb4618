#include "ipc_core/base/errors.hpp"
#include "ipc_core/shm/shm_name.hpp"

#include <gtest/gtest.h>
#include <stdexcept>
#include <string>

using shmipc::InvalidArgument;
using shmipc::normalize_shm_name;

TEST(ShmName, a_leading_slash_is_optional_and_kept_single) {
    EXPECT_EQ(normalize_shm_name("frames"), "/frames");
    EXPECT_EQ(normalize_shm_name("/frames"), "/frames");
}

TEST(ShmName, names_with_inner_slashes_nul_or_bad_length_are_rejected) {
    EXPECT_THROW((void)normalize_shm_name(""), InvalidArgument);
    EXPECT_THROW((void)normalize_shm_name("/"), InvalidArgument);
    EXPECT_THROW((void)normalize_shm_name("//x"), InvalidArgument);
    EXPECT_THROW((void)normalize_shm_name("a/b"), InvalidArgument);
    EXPECT_THROW((void)normalize_shm_name(std::string("a\0b", 3)), InvalidArgument);
    EXPECT_THROW((void)normalize_shm_name(".."), InvalidArgument);
    EXPECT_NO_THROW((void)normalize_shm_name(std::string(200, 'x')));
    EXPECT_THROW((void)normalize_shm_name(std::string(201, 'x')), InvalidArgument);
}
