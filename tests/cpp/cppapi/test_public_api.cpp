// The GoogleTest suite of the public C++ API (tests/cpp_api/test_api.cpp) inside the main
// build, so that it runs under ASan/UBSan and TSan with the engine (dev/ctest asan -R Api).
// tests/python/test_cpp_api.py runs the same file built against the installed package.
#include "../../cpp_api/test_api.cpp"
