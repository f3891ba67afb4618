// shmipc._core.ReadySignal and the reactor's module functions (the kinds' _arm methods are in
// their own bind files). Nothing here waits: the reactor's threads never take the GIL.
#include "bindings.hpp"

#include "ipc_core/sync/reactor.hpp"

#include <pybind11/stl.h>

#include <memory>

namespace shmipc::bindings {

void bind_reactor(py::module_ &m) {
    py::class_<ReadySignal, std::shared_ptr<ReadySignal>>(m, "ReadySignal")
        .def(py::init<>())
        .def("fileno", &ReadySignal::fd)
        .def("take", &ReadySignal::take, "Drains the eventfd; the tokens fired since last take.")
        .def("raise_", &ReadySignal::raise, "Makes the eventfd readable.");
    m.def(
        "reactor_disarm", [](std::uint64_t id) { return Reactor::instance().disarm(id); },
        py::arg("id"));
    m.def("reactor_mode",
          [] { return std::string(reactor_mode_name(Reactor::instance().mode())); });
    m.def("reactor_armed", [] { return Reactor::instance().armed(); });
    m.def("reactor_threads", [] { return Reactor::instance().threads(); });
}

} // namespace shmipc::bindings
