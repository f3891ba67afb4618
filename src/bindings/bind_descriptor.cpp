// shmipc._core.encode_array_descriptor / decode_array_descriptor / array_descriptor_length:
// the one wire format of an array's description (src/ipc_core/base/array_descriptor.hpp), for
// python/shmipc/_descriptor.py, which turns the dtype strings into NumPy dtypes and caches
// both directions. Malformed input raises CorruptSegmentError (the engine's CorruptSegment).
#include "bindings.hpp"

#include "ipc_core/base/array_descriptor.hpp"
#include "ipc_core/base/errors.hpp"

#include <string>
#include <string_view>

namespace shmipc::bindings {
namespace {

py::bytes encode(const std::string &dtype, const py::tuple &shape, std::uint64_t offset,
                 bool fortran, bool structured) {
    ArrayDescriptor d;
    d.dtype = dtype;
    d.offset = offset;
    d.fortran = fortran;
    d.structured = structured;
    if (shape.size() > kMaxArrayDims)
        throw InvalidArgument("an array descriptor holds at most " + std::to_string(kMaxArrayDims) +
                              " dimensions, got " + std::to_string(shape.size()));
    d.shape.reserve(shape.size());
    for (py::handle n : shape)
        d.shape.push_back(n.cast<std::int64_t>());
    std::string out = encode_array_descriptor(d);
    return {out.data(), out.size()};
}

py::tuple decode(py::handle raw) {
    ArrayDescriptor d;
    {
        PyBufferRef b(raw);
        d = decode_array_descriptor(b.bytes());
    }
    py::tuple shape(d.shape.size());
    for (std::size_t i = 0; i < d.shape.size(); ++i)
        shape[i] = py::int_(d.shape[i]);
    return py::make_tuple(py::str(d.dtype), shape, py::int_(d.offset), py::bool_(d.fortran),
                          py::bool_(d.structured));
}

std::size_t length(py::handle raw) {
    PyBufferRef b(raw);
    return array_descriptor_length(b.bytes());
}

} // namespace

void bind_descriptor(py::module_ &m) {
    m.attr("ARRAY_DESCRIPTOR_VERSION") = kArrayDescriptorVersion;
    m.def("encode_array_descriptor", &encode, py::arg("dtype"), py::arg("shape"), py::arg("offset"),
          py::arg("fortran"), py::arg("structured"),
          "dtype string, shape, offset, order -> the descriptor's bytes (ValueError if it "
          "cannot be encoded)");
    m.def("decode_array_descriptor", &decode, py::arg("raw"),
          "a descriptor's bytes -> (dtype, shape, offset, fortran, structured); "
          "CorruptSegmentError if malformed");
    m.def("array_descriptor_length", &length, py::arg("raw"),
          "the length of the descriptor at the start of `raw` (CorruptSegmentError if it does "
          "not fit)");
}

} // namespace shmipc::bindings
