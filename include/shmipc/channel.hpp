// shmipc::Channel: declared with the heap it lives in (shmipc/heap.hpp).
#pragma once

#include "shmipc/heap.hpp"
