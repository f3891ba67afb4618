// C++ -> Python: publishes a pose (a float64 array) and a status text as shared values.
// Run: python examples/cpp/value_reader.py & ./value_writer
#include "example_util.hpp"

#include <array>
#include <cstdio>

int main(int argc, char **argv) {
    std::string name = argc > 1 ? argv[1] : "example_pose";
    auto pose = example::retry([&] { return shmipc::SharedValue::attach(name); });
    for (int i = 1; i <= 5; ++i) {
        std::array<double, 3> xyz = {1.0 * i, 2.0 * i, 3.0 * i};
        pose.write_array(std::span<const double>(xyz), {3}); // Python reads an ndarray
    }
    pose.write_text("done"); // Python reads a str
    std::puts("writer: 6 writes");
}
