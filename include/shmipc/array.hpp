// The description of an n-dimensional array as it travels with array data between C++ and
// Python: a NumPy dtype string, a shape and the element order. A C++ program that sends
// {dtype "<f4", shape {480, 640}} is read by Python as np.float32 of shape (480, 640), and what
// Python sends arrives here with its dtype.str and shape.
#pragma once

#include "shmipc/config.hpp"
#include "shmipc/errors.hpp"

#include <bit>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace shmipc {
inline namespace v1 {

struct ArrayInfo {
    std::string dtype;               // NumPy dtype.str: "<f4", "|u1", "<i8", "<c16", "<U8" ...
    std::vector<std::int64_t> shape; // each >= 0; empty: a 0-d array (one element)
    bool fortran = false;            // column-major element order (buffers and channels)

    // Bytes of one element ("<f8" -> 8); InvalidArgument for a dtype this API cannot size (a
    // structured dtype's description).
    [[nodiscard]] std::size_t itemsize() const;
    // Elements (the product of the shape) and bytes of the array.
    [[nodiscard]] std::size_t size() const;
    [[nodiscard]] std::size_t nbytes() const { return size() * itemsize(); }

    friend bool operator==(const ArrayInfo &, const ArrayInfo &) = default;
};

// The NumPy dtype string of a C++ element type (native byte order): dtype_of<float>() is
// "<f4" on a little-endian machine, dtype_of<std::uint8_t>() is "|u1".
template <class T> [[nodiscard]] std::string dtype_of() {
    using U = std::remove_cv_t<T>;
    constexpr char order = std::endian::native == std::endian::little ? '<' : '>';
    auto make = [](char o, char kind, std::size_t n) {
        std::string s{o, kind};
        s += std::to_string(n);
        return s;
    };
    if constexpr (std::is_same_v<U, bool>) {
        return "|b1";
    } else if constexpr (std::is_same_v<U, std::complex<float>> ||
                         std::is_same_v<U, std::complex<double>>) {
        return make(order, 'c', sizeof(U));
    } else if constexpr (std::is_floating_point_v<U>) {
        return make(order, 'f', sizeof(U));
    } else if constexpr (std::is_integral_v<U>) {
        char kind = std::is_signed_v<U> ? 'i' : 'u';
        return make(sizeof(U) == 1 ? '|' : order, kind, sizeof(U));
    } else {
        static_assert(std::is_arithmetic_v<U>, "dtype_of<T>: T must be arithmetic or complex");
        return {};
    }
}

// ArrayInfo of a C-ordered array of T with `shape`.
template <class T> [[nodiscard]] ArrayInfo array_info(std::vector<std::int64_t> shape) {
    return ArrayInfo{dtype_of<T>(), std::move(shape), false};
}

// The elements of received array bytes as T: InvalidArgument if the dtype is not T's or the
// bytes are fewer than the shape needs.
template <class T>
[[nodiscard]] std::span<const T> array_cast(std::span<const std::byte> bytes,
                                            const ArrayInfo &info) {
    // (Messages are built with +=: GCC 12's -Wrestrict misfires on "literal" + std::string&&.)
    if (info.dtype != dtype_of<T>()) {
        std::string msg = "array of dtype '";
        msg += info.dtype;
        msg += "' read as '";
        msg += dtype_of<T>();
        msg += "'";
        throw InvalidArgument(msg);
    }
    std::size_t n = info.size();
    if (bytes.size() < n * sizeof(T)) {
        std::string msg = "array of ";
        msg += std::to_string(n);
        msg += " elements in ";
        msg += std::to_string(bytes.size());
        msg += " bytes";
        throw InvalidArgument(msg);
    }
    return {reinterpret_cast<const T *>(bytes.data()), n};
}

} // namespace v1
} // namespace shmipc
