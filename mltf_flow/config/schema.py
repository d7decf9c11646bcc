"""The base of every configuration type, validation, and how a failed validation reads.

Every configuration type (settings, profiles, the fabric / rucio / gds sections) is a frozen dataclass
deriving from :class:`Schema`: unknown keys forbidden (documents warn about them before validating, sections
reject them), and words for what each field expects. They are plain values: a process that only reads a
remembered configuration (:mod:`mltf_flow.config.memo`) never imports pydantic. :func:`validate` checks a
mapping against one with pydantic (imported then) and turns its :class:`~pydantic.ValidationError` into a
:class:`~mltf_flow.errors.ConfigError` that says where (file, profile, key), what was found and what is
expected; no pydantic traceback reaches the user.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from mltf_flow.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import TypeAdapter, ValidationError

M = TypeVar("M", bound="Schema")
#: Says where a top-level key came from: "<file>: profile 'gpu'" (or just "<file>").
Where = Callable[[str], str]

_GENERIC = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "float_type": "a number", "float_parsing": "a number", "list_type": "a list", "tuple_type": "a list",
    "dict_type": "a mapping", "dataclass_type": "a mapping", "dataclass_exact_type": "a mapping",
}
#: pydantic's error types for a key the dataclass does not have.
_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schema:
    """A configuration type (see the module docstring). Subclasses are ``@dataclass(frozen=True, kw_only=True)``."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}
    #: The section's name in messages ("fabric", "rucio", "gds", "cufile"); "" for whole documents.
    section: ClassVar[str] = ""
    #: What the mapping looks like, for "key 'fabric': expected a mapping (...)".
    shape: ClassVar[str] = ""
    #: What a field expects, in words; fields not listed get a wording from the error type.
    expect: ClassVar[dict[str, str]] = {}
    #: Between ``where`` and ``key 'name'`` in messages of whole documents ("FILE: profile 'p', key 'x'").
    joiner: ClassVar[str] = ", "


def field_names(model: type[Schema]) -> tuple[str, ...]:
    """The keys ``model`` has, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(model))


def set_fields(value: Schema) -> frozenset[str]:
    """The fields of ``value`` that differ from their defaults (what its mapping set)."""
    changed = set()
    for f in dataclasses.fields(value):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            changed.add(f.name)
            continue
        if getattr(value, f.name) != default:
            changed.add(f.name)
    return frozenset(changed)


def dump(value: Schema) -> dict[str, Any]:
    """``value`` as the JSON-able mapping that validates back to it (keys left at their defaults omitted)."""
    data: dict[str, Any] = _adapter(type(value)).dump_python(value, mode="json", exclude_defaults=True)
    return data


_ADAPTERS: dict[type[Schema], TypeAdapter[Any]] = {}


def _adapter(model: type[Schema]) -> TypeAdapter[Any]:
    """pydantic's validator and serializer of ``model``, built on first use (pydantic is imported then)."""
    if model not in _ADAPTERS:
        from pydantic import TypeAdapter

        _ADAPTERS[model] = TypeAdapter(model)
    return _ADAPTERS[model]


def validate(model: type[M], data: Any, where: str | Where) -> M:
    """``data`` as a ``model``; a ConfigError naming ``where`` if it is not one."""
    from pydantic import ValidationError

    try:
        value: M = _adapter(model).validate_python(data)
    except ValidationError as exc:
        raise config_error(exc, model, where) from None
    return value


def config_error(exc: ValidationError, model: type[Schema], where: str | Where) -> ConfigError:
    """The ConfigError (one line per problem) for a failed validation of ``model``."""
    locate: Where = (lambda _key: where) if isinstance(where, str) else where
    lines: list[str] = []
    unknown: dict[tuple[Any, ...], list[str]] = {}
    for error in exc.errors():
        loc = tuple(error["loc"])
        if error["type"] in _UNKNOWN:
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        else:
            lines.append(_describe(error, loc, model, locate))
    for parent, keys in unknown.items():
        owner = _model_at(model, parent)
        label = f"{owner.section}: " if owner.section else ""
        lines.append(f"{locate(str(parent[0]) if parent else '')}: {label}unknown key(s) {', '.join(keys)}; "
                     f"known: {', '.join(field_names(owner))}.")
    return ConfigError("\n".join(lines))


def _describe(error: Mapping[str, Any], loc: tuple[Any, ...], model: type[Schema], locate: Where) -> str:
    path = tuple(part for part in loc if isinstance(part, str))  # list indexes are not keys
    where = locate(path[0] if path else "")
    found, kind = error.get("input"), error["type"]
    target = _model_at(model, path)
    if not path or target is not _model_at(model, path[:-1]):  # the value of a whole model (or section)
        if kind == "value_error":
            return f"{where}: {error['ctx']['error']}"  # a check across its keys: the message is complete
        name, joiner = (path[-1], _model_at(model, path[:-1]).joiner) if path else (target.section, ", ")
        return f"{where}{joiner}key {name!r}: expected a mapping ({target.shape}), found {found!r}."
    owner, key = _model_at(model, path[:-1]), path[-1]
    label = f": {owner.section} {key}" if owner.section else f"{owner.joiner}key {key!r}"
    if kind == "value_error":
        return f"{where}{label}: {error['ctx']['error']}"
    expected = owner.expect.get(key) or _GENERIC.get(kind)
    if kind == "literal_error":
        expected = expected or f"one of {error['ctx']['expected']}"
        if owner.section:
            return f"{where}{label} {found!r}: expected {expected}."
    if expected is None:  # a constraint (ge, gt, ...): pydantic's words
        expected = str(error["msg"]).removeprefix("Input should be ")
    return f"{where}{label}: expected {expected}, found {found!r}."


def _model_at(model: type[Schema], path: tuple[Any, ...]) -> type[Schema]:
    """The model that holds the value at ``path`` (the deepest section model on the way)."""
    current = model
    for part in path:
        annotation = _hints(current).get(str(part))
        if annotation is None:
            break
        nested = _schema_in(annotation)
        if nested is None:
            break
        current = nested
    return current


def _hints(model: type[Schema]) -> dict[str, Any]:
    """Field name -> its type (the annotations are strings under ``from __future__ import annotations``)."""
    names = set(field_names(model))
    return {k: v for k, v in typing.get_type_hints(model).items() if k in names}


def _schema_in(annotation: Any) -> type[Schema] | None:
    if isinstance(annotation, type) and issubclass(annotation, Schema):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _schema_in(arg)
            if found is not None:
                return found
    return None
