"""The base of every configuration type, validation, and how a failed validation reads.

Every configuration type (settings, profiles, the fabric / rucio / gds sections, ``pipeline.yaml``, the
backend config) is a frozen dataclass deriving from :class:`Schema`: unknown keys forbidden (settings and
profiles warn about them before validating, the others reject them), and words for what each field
expects. A field may hold a section (another Schema) or a mapping of named entries (``steps: {name:
StepEntry}``), whose messages say ``step 'train'``. They are plain values: a process that only reads a
remembered configuration (:mod:`mltf_flow.config.memo`) never imports pydantic. :func:`validate` checks a
mapping against one with pydantic (imported then) and turns its :class:`~pydantic.ValidationError` into a
:class:`~mltf_flow.errors.ConfigError` that says where (file, profile, key), what was found and what is
expected; no pydantic traceback reaches the user.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
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
    #: What one of a mapping of these is called in messages ("step" gives "step 'train'").
    entry: ClassVar[str] = ""
    #: Keys written otherwise than their field's name (field -> key): "sbatch-script-file" is no identifier.
    written: ClassVar[dict[str, str]] = {}


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
    unknown: dict[tuple[str, ...], list[str]] = {}
    for error in exc.errors():
        path = tuple(part for part in error["loc"] if isinstance(part, str))  # list indexes are not keys
        if error["type"] in _UNKNOWN:
            unknown.setdefault(path[:-1], []).append(path[-1])
        else:
            lines.append(_describe(error, path, model, locate))
    for parent, keys in unknown.items():
        place = _walk(model, parent)
        owner = place.model
        label = f"{owner.section}: " if owner.section else ""
        known = [owner.written.get(name, name) for name in field_names(owner)]
        lines.append(f"{place.text(locate)}: {label}unknown key(s) {', '.join(keys)}; known: {', '.join(known)}."
                     f"{did_you_mean(keys, known)}")
    # A union (``dict | str``) fails once per member, with the same words: said once.
    return ConfigError("\n".join(dict.fromkeys(lines)))


def close_match(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` is probably a typo of, if any."""
    found = difflib.get_close_matches(key, list(known), n=1)
    return found[0] if found else None


def did_you_mean(keys: list[str], known: Iterable[str]) -> str:
    """" Did you mean 'x'?" for the unknown ``keys`` that are close to a known one ("" when none is)."""
    hints = [(key, match) for key in keys if (match := close_match(key, known))]
    if not hints:
        return ""
    if len(keys) == 1:
        return f" Did you mean {hints[0][1]!r}?"
    return f" Did you mean {', '.join(f'{match!r} for {key!r}' for key, match in hints)}?"


@dataclasses.dataclass(frozen=True)
class _Place:
    """Where a path of keys leads: the deepest model on it, the named entries on the way and the rest."""

    path: tuple[str, ...]
    model: type[Schema]
    parent: type[Schema]
    entries: tuple[str, ...]
    rest: tuple[str, ...]
    #: The model was reached as an entry of a mapping ("step 'train'"), not as a section.
    as_entry: bool

    def text(self, locate: Where) -> str:
        return locate(self.path[0] if self.path else "") + "".join(f": {label}" for label in self.entries)


def _walk(model: type[Schema], path: tuple[str, ...]) -> _Place:
    current, parent, i, as_entry = model, model, 0, False
    entries: tuple[str, ...] = ()
    while i < len(path):
        annotation = _hints(current).get(path[i])
        nested = None if annotation is None else _schema_in(annotation)
        if nested is None:
            break
        schema, named = nested
        if named and i + 1 == len(path):  # the mapping itself (not a mapping, say): an error of its key
            break
        if named:
            entries = (*entries, f"{schema.entry} {path[i + 1]!r}")
        parent, current, i, as_entry = current, schema, i + (2 if named else 1), named
    return _Place(path, current, parent, entries, path[i:], as_entry)


def _describe(error: Mapping[str, Any], path: tuple[str, ...], model: type[Schema], locate: Where) -> str:
    place = _walk(model, path)
    where = place.text(locate)
    found, kind = error.get("input"), error["type"]
    if not place.rest:  # the value of a whole model (the document, a section or an entry)
        target = place.model
        if kind == "value_error":
            return f"{where}: {error['ctx']['error']}"  # a check across its keys: the message is complete
        if place.as_entry:
            return f"{where}: expected a mapping ({target.shape}), found {found!r}."
        name, joiner = (path[-1], place.parent.joiner) if path else (target.section, ", ")
        return f"{where}{joiner}key {name!r}: expected a mapping ({target.shape}), found {found!r}."
    owner, key = place.model, place.rest[0]
    shown = owner.written.get(key, key)
    label = f": {owner.section} {shown}" if owner.section else f"{owner.joiner}key {shown!r}"
    if kind == "value_error":
        return f"{where}{label}: {error['ctx']['error']}"
    expected = owner.expect.get(key) or _GENERIC.get(kind)
    if kind == "missing":  # pydantic's words would be "expected Field required, found {the whole entry}"
        return f"{where}{label}: missing, and it is required" + (f" ({expected})." if expected else ".")
    if kind == "literal_error":
        expected = expected or f"one of {error['ctx']['expected']}"
        if owner.section:
            return f"{where}{label} {found!r}: expected {expected}."
    if expected is None:  # a constraint (ge, gt, ...): pydantic's words
        expected = str(error["msg"]).removeprefix("Input should be ")
    return f"{where}{label}: expected {expected}, found {found!r}."


def _hints(model: type[Schema]) -> dict[str, Any]:
    """Field name -> its type (the annotations are strings under ``from __future__ import annotations``)."""
    names = set(field_names(model))
    return {k: v for k, v in typing.get_type_hints(model).items() if k in names}


def _schema_in(annotation: Any) -> tuple[type[Schema], bool] | None:
    """The model a field holds, and whether as a mapping of named entries (``dict[str, Model]``)."""
    if isinstance(annotation, type) and issubclass(annotation, Schema):
        return annotation, False
    if typing.get_origin(annotation) is dict:
        value = typing.get_args(annotation)[-1]
        if isinstance(value, type) and issubclass(value, Schema):
            return value, True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            found = _schema_in(arg)
            if found is not None:
                return found
    return None
