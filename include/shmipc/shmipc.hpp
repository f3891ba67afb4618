// shmipc's public C++ API: every kind, on the same names and formats as the Python package, so
// C++ and Python programs share the same objects in both directions (docs/cpp.md).
//
// CMake:  find_package(shmipc CONFIG REQUIRED)   # CMAKE_PREFIX_PATH: python -m shmipc --cmake-dir
//         target_link_libraries(app PRIVATE shmipc::shmipc)
#pragma once

#include "shmipc/array.hpp"
#include "shmipc/buffer.hpp"
#include "shmipc/channel.hpp"
#include "shmipc/config.hpp"
#include "shmipc/errors.hpp"
#include "shmipc/heap.hpp"
#include "shmipc/queue.hpp"
#include "shmipc/stream.hpp"
#include "shmipc/topic.hpp"
#include "shmipc/value.hpp"
