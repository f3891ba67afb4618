"""Argument checks shared by every public entry point (API.md §0).

One rule everywhere: a wrong type is ``TypeError``, a wrong value ``ValueError``, an integer too
large for the engine ``OverflowError``; every message names the parameter. Nothing here touches
shared memory.
"""

from __future__ import annotations

import math
import operator
from typing import Any

# TrustPolicy of the engine (src/ipc_core/shm/open_name.hpp): uid_t values it reserves.
OWN_USER = 0xFFFFFFFF
ANY_OWNER = 0xFFFFFFFE

_SIZE_MAX = (1 << 63) - 1


def _type_name(value: Any) -> str:
    return type(value).__name__


def name(value: Any, param: str = "name") -> str:
    """A shared-memory name: a ``str`` (the engine checks its characters and length)."""
    if not isinstance(value, str):
        raise TypeError(f"{param} must be a str, not {_type_name(value)}")
    return value


def integer(value: Any, param: str, *, minimum: int = 0, maximum: int = _SIZE_MAX) -> int:
    """An ``int`` (or an object with ``__index__``, never a bool) within [minimum, maximum]:
    ``ValueError`` below, ``OverflowError`` above."""
    if type(value) is int and minimum <= value <= maximum:
        return value  # the common case, checked in one step (bool is not exactly int)
    if isinstance(value, bool):
        raise TypeError(f"{param} must be an int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{param} must be an int, not {_type_name(value)}") from None
    if v < minimum:
        raise ValueError(f"{param} must be >= {minimum}, got {v}")
    if v > maximum:
        raise OverflowError(f"{param} is too large: {v} (at most {maximum})")
    return v


def timeout(value: Any, param: str = "timeout") -> float | None:
    """``None`` (wait forever) or a number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{param} must be a number of seconds or None, not {_type_name(value)}")
    t = float(value)
    if math.isnan(t):
        raise ValueError(f"{param} must be a number of seconds, not NaN")
    if t < 0:
        raise ValueError(f"{param} must be >= 0 seconds (or None to wait forever), got {value}")
    return t


def mode(value: Any, param: str = "mode") -> int:
    """Permission bits within 0o777 (no setuid, setgid or sticky bit)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{param} must be an int such as 0o600, not {_type_name(value)}")
    if value < 0 or value > 0o777:
        raise ValueError(f"{param} must be permission bits within 0o777, got {value:#o}")
    return value


def trust_uid(trust_owner: Any) -> int:
    """``trust_owner=`` (API.md §7) as the engine's uid: ``None`` trusts only our own user,
    ``"any"`` everyone, an int that user (and ours)."""
    if trust_owner is None:
        return OWN_USER
    if isinstance(trust_owner, str):
        if trust_owner == "any":
            return ANY_OWNER
        raise ValueError(f'trust_owner must be a uid, "any" or None, not {trust_owner!r}')
    if isinstance(trust_owner, bool) or not isinstance(trust_owner, int):
        raise TypeError(
            f'trust_owner must be a uid (int), "any" or None, not {_type_name(trust_owner)}'
        )
    if trust_owner < 0 or trust_owner >= ANY_OWNER:
        raise ValueError(f"trust_owner must be a uid in [0, {ANY_OWNER - 1}], got {trust_owner}")
    return trust_owner
