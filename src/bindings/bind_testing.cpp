// Test-only hooks of the engine (testing/crash_point.hpp), for the Python test suites.
#include "bindings.hpp"

#include "ipc_core/testing/crash_point.hpp"

#include <string>

namespace shmipc::bindings {

void bind_testing(py::module_ &m) {
    m.def(
        "_arm_crash_point",
        [](const std::string &point, int countdown, bool stall) {
            arm_crash_point(point, countdown, stall ? CrashAction::Stall : CrashAction::Kill);
        },
        py::arg("point"), py::arg("countdown") = 1, py::arg("stall") = false,
        "Test hook: the countdown-th pass at `point` kills (or stalls) this process.");
}

} // namespace shmipc::bindings
