"""Where the C++ API is installed (API.md section 13), as pybind11 and numpy tell it.

The wheel ships the public headers (``include/shmipc/*.hpp``), the static library
(``lib/libshmipc.a``, position independent), the CMake package (``lib/cmake/shmipc``) and a
pkg-config file (``lib/pkgconfig/shmipc.pc``) next to the extension module ``shmipc._core``.
"""

from __future__ import annotations

from pathlib import Path

from . import _core

__all__ = ["get_include", "get_cmake_dir", "get_library_dir", "get_pkgconfig_dir"]


def _root() -> Path:
    # Next to the compiled module: in an editable install the Python files stay in the source
    # tree while the module, headers and library are installed into site-packages.
    return Path(_core.__file__).resolve().parent


def _existing(path: Path, what: str) -> str:
    if not path.is_dir():
        raise FileNotFoundError(
            f"shmipc's {what} is not installed at {path} (was the package built without its "
            "CMake install step?)"
        )
    return str(path)


def get_include() -> str:
    """The directory to add to the include path: ``#include <shmipc/shmipc.hpp>``."""
    return _existing(_root() / "include", "C++ include directory")


def get_library_dir() -> str:
    """The directory holding ``libshmipc.a`` (link with ``-lshmipc -pthread``)."""
    return _existing(_root() / "lib", "library directory")


def get_cmake_dir() -> str:
    """The directory of ``shmipcConfig.cmake``: pass it as ``-Dshmipc_DIR=...`` or put it in
    ``CMAKE_PREFIX_PATH``, then ``find_package(shmipc CONFIG REQUIRED)``."""
    return _existing(_root() / "lib" / "cmake" / "shmipc", "CMake package")


def get_pkgconfig_dir() -> str:
    """The directory of ``shmipc.pc`` (for ``PKG_CONFIG_PATH``)."""
    return _existing(_root() / "lib" / "pkgconfig", "pkg-config directory")
