"""The hostile suite (issue 10): other users, stopped holders, truncation, cgroups, fd limits
and scribbles, each with real processes. Shares the fixtures of tests/python."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

from conftest_common import (  # noqa: E402,F401
    ctrl_c_raises_keyboard_interrupt,
    name,
    no_fd_leaks,
    no_shm_leaks,
    spawn,
)
