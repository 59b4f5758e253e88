r"""Type checks of dataclass fields against their annotations (configs, recipes, command-line overrides),
so that ``lr="abc"`` fails where it is set, naming the field, rather than deep inside torch."""
from __future__ import annotations

import dataclasses
import functools
import types
import typing

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False", dict: "a dict",
          type(None): "None"}


@functools.lru_cache(maxsize=None)
def field_types(cls) -> dict:
    """``{field name: annotation}`` of a dataclass, string annotations resolved."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _options(hint) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def conforms(value, hint) -> bool:
    """Whether ``value`` fits the annotation ``hint``: an int is a float, a bool is no int, a dataclass
    field accepts a dict (its fields)."""
    for h in _options(hint):
        if h is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if h is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if h in (str, bool, dict, type(None)) and isinstance(value, h):
            return True
        if dataclasses.is_dataclass(h) and isinstance(value, (h, dict)):
            return True
        if h is typing.Any:
            return True
    return False


def describe(hint) -> str:
    """'a number or None' for ``float | None``."""
    return " or ".join(_NAMES.get(h, getattr(h, "__name__", str(h))) for h in _options(hint))


class FieldTypeError(TypeError, ValueError):
    """A field's value has the wrong type (a TypeError, and a ValueError: it is bad input)."""


def check_field_type(cls, name: str, value, label: str | None = None) -> None:
    """Raise :class:`FieldTypeError` naming ``label`` (default ``name``) if ``value`` does not fit the
    field's annotation."""
    hint = field_types(cls)[name]
    if not conforms(value, hint):
        raise FieldTypeError(f"{label or name} must be {describe(hint)}; got {value!r} ({type(value).__name__})")


def check_path(cls, parts: list[str], value, label: str) -> None:
    """Check ``value`` for the nested field ``parts`` of dataclass ``cls`` (``["train", "lr"]``: the field
    ``lr`` of the dataclass in field ``train``). Unknown names and fields inside a plain dict (free-form,
    e.g. ``net_overrides``) are left to the caller."""
    for i, name in enumerate(parts):
        hint = field_types(cls).get(name)
        if hint is None:
            return
        if i == len(parts) - 1:
            check_field_type(cls, name, value, label)
        elif dataclasses.is_dataclass(hint):
            cls = hint
        else:
            return


def check_types(obj, prefix: str = "") -> None:
    """Check every field of the dataclass instance ``obj`` (see :func:`check_field_type`)."""
    for name in field_types(type(obj)):
        check_field_type(type(obj), name, getattr(obj, name), prefix + name)
