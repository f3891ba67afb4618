#include "ipc_core/base/deadline.hpp"

#include <cmath>
#include <gtest/gtest.h>
#include <thread>

using namespace shmipc;
using namespace std::chrono_literals;

TEST(Deadline, none_waits_forever_in_slices) {
    Deadline d = Deadline::never();
    EXPECT_TRUE(d.infinite());
    EXPECT_FALSE(d.expired());
    EXPECT_EQ(d.slice(), std::chrono::nanoseconds(kWaitSlice));
}

TEST(Deadline, zero_and_negative_and_nan_do_not_wait) {
    for (double t : {0.0, -1.0, std::nan("")}) {
        Deadline d(t);
        EXPECT_TRUE(d.expired()) << t;
        EXPECT_EQ(d.slice().count(), 0) << t;
    }
}

TEST(Deadline, slices_never_run_past_the_deadline) {
    Deadline d(0.02);
    EXPECT_LE(d.slice(), 20ms);
    std::this_thread::sleep_for(30ms);
    EXPECT_TRUE(d.expired());
    EXPECT_EQ(d.remaining().count(), 0);
}

TEST(Deadline, huge_timeouts_do_not_overflow) {
    Deadline d(1e30);
    EXPECT_FALSE(d.expired());
    EXPECT_EQ(d.slice(), std::chrono::nanoseconds(kWaitSlice));
}
