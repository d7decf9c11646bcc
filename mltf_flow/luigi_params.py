"""Luigi's list of a task class's parameters, remembered per class.

Luigi builds the list from ``dir(cls)`` at every call, and instantiating one task calls it four times: for
a step class (a few hundred attributes) that was a large part of scheduling a 1,000-step DAG. The list is
kept per class and built again when an attribute is added to one of its classes later (Luigi computes it
late so that classes can be extended dynamically).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: class -> (the sizes of the namespaces of its classes, its parameters).
_HELD: dict[type, tuple[tuple[int, ...], list[tuple[str, Any]]]] = {}


def class_params(cls: type, compute: Callable[[], list[tuple[str, Any]]]) -> list[tuple[str, Any]]:
    """``compute()`` (Luigi's ``get_params``) for ``cls``, remembered while its classes gain no attribute."""
    shape = tuple(len(vars(klass)) for klass in cls.__mro__)
    held = _HELD.get(cls)
    if held is None or held[0] != shape:
        held = (shape, list(compute()))
        _HELD[cls] = held
    return list(held[1])


__all__ = ["class_params"]
