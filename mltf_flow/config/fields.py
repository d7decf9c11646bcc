"""Constraints on configuration fields, written as ``Annotated`` metadata that pydantic understands.

The configuration values are plain frozen dataclasses, so that a cached rerun (which loads its resolved
configuration from :mod:`mltf_flow.config.memo`) never imports pydantic. pydantic validates them when a
file is read: it asks each piece of metadata here for its part of the schema
(``__get_pydantic_core_schema__``, pydantic's documented hook for custom types), and only then is
``pydantic_core`` imported. ``Annotated[int, Strict, Ge(1)]`` reads as pydantic's ``StrictInt = Field(ge=1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, cast

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema


class _Strict:
    """No coercion: ``"3"`` is not an int, ``1`` is not a bool."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return cast("CoreSchema", {**handler(source), "strict": True})


Strict = _Strict


class _Bound:
    """A bound on a number (pydantic's ``ge`` / ``gt`` / ``le``)."""

    key = ""

    def __init__(self, value: float) -> None:
        self.value = value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return cast("CoreSchema", {**handler(source), self.key: self.value})


class Ge(_Bound):
    """Greater than or equal to ``value``."""

    key = "ge"


class Gt(_Bound):
    """Greater than ``value``."""

    key = "gt"


class Le(_Bound):
    """Less than or equal to ``value``."""

    key = "le"


class Before:
    """Run ``function`` on the raw value first (pydantic's ``BeforeValidator``): it may convert the value, or
    raise ``ValueError`` with the message the user sees."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.function = function

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(self.function, handler(source))


StrictInt = Annotated[int, Strict]
StrictFloat = Annotated[float, Strict]
StrictStr = Annotated[str, Strict]
StrictBool = Annotated[bool, Strict]
