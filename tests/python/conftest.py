"""Shared fixtures: fresh names, leak checks for /dev/shm and fds, a spawn context."""

from __future__ import annotations

from conftest_common import (  # noqa: F401
    ctrl_c_raises_keyboard_interrupt,
    name,
    no_fd_leaks,
    no_shm_leaks,
    spawn,
)
