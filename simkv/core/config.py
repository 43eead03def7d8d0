"""Typed configuration: nested dataclasses built from plain dicts, with key-naming errors.

One mechanism serves every configuration in simkv (the scenario, the generator's
parameters): :func:`from_dict` builds a dataclass from a mapping, checking every key and
every value against the field's annotated type; :func:`apply_overrides` applies
``key.sub=value`` strings as given to ``--set`` on the command line.

Values are taken as YAML typed them, never parsed from text: a number field takes a finite
number (``+inf`` too where the caller allows it: TTL parameters; an ``int`` field an
integer-valued number within 64 bits), a ``bool`` field ``true`` or ``false``; a quoted
``'256'`` is a string and an error there. YAML is read with exponent floats (``1e-9``,
``2E6``) as numbers, as YAML 1.2 does (PyYAML's 1.1 rules read them as strings).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from simkv.core.errors import ScenarioError

T = TypeVar("T")
#: Integers (and integer-valued numbers) in a configuration must fit in 64 bits: the
#: simulator counts in int64.
INT_LIMIT = 2**63


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a 400-digit integer is not worth printing)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _coerce(value: Any, tp: Any, key: str, infinite: bool = False) -> Any:
    """``value`` as annotation ``tp`` or a :class:`ScenarioError` naming ``key``
    (``infinite``: a float may be ``+inf``)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, infinite)
            except ScenarioError as exc:
                errors.append(str(exc))
        raise ScenarioError(errors[0] if len(errors) == 1 else
                            f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ScenarioError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key, infinite=infinite)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{key}: expected a mapping, got {value!r}")
        ktp, vtp = get_args(tp) or (str, Any)
        return {_coerce(k, ktp, f"{key}.{k}"): _coerce(v, vtp, f"{key}.{k}", infinite)
                for k, v in value.items()}
    if origin in (list, tuple):
        # Only YAML flow syntax makes a list: 'a,b' stays a string (and is rejected here).
        if not isinstance(value, list | tuple):
            raise ScenarioError(f"{key}: expected a list (e.g. [a, b]), got {value!r}")
        (etp, *_) = get_args(tp) or (Any,)
        out = [_coerce(v, etp, f"{key}[{i}]", infinite) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ScenarioError(f"{key}: {value!r} is not a boolean (true or false)")
    if tp is int:
        number = int(value) if isinstance(value, float) and value.is_integer() else value
        if isinstance(number, bool) or not isinstance(number, int):
            raise ScenarioError(f"{key}: {_show(value)} is not an integer")
        if not -INT_LIMIT <= number < INT_LIMIT:
            raise ScenarioError(f"{key}: {_show(value)} is out of range (a 64-bit integer)")
        return number
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{key}: {_show(value)} is not a number")
        if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
            raise ScenarioError(f"{key}: {_show(value)} is out of range")
        if not (math.isfinite(value) or (infinite and value == math.inf)):
            raise ScenarioError(f"{key}: {value!r} is not a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ScenarioError(f"{key}: {value!r} is not a string")
    return value


class DuplicateKeyError(ScenarioError):
    """A YAML mapping gives ``key`` twice (PyYAML would silently keep the last value)."""

    def __init__(self, source: str, line: int, key: Any) -> None:
        self.reason = f"duplicate key {key!r} (YAML would silently keep the last value)"
        super().__init__(f"{source}:{line}: {self.reason}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (PyYAML keeps the last)
    and reads ``1e-9`` as a float (YAML 1.2; PyYAML's 1.1 resolver wants ``1.0e-09``)."""

    source = "<yaml>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                dup = key in seen
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if dup:
                raise DuplicateKeyError(self.source, key_node.start_mark.line + 1, key)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str, source: str | Path) -> Any:
    """``yaml.safe_load`` that rejects duplicate keys, naming ``source``, the line and the
    key; other YAML errors raise :class:`ScenarioError` naming ``source``."""
    loader = None
    try:
        loader = _UniqueKeyLoader(text)  # checks the characters: a NUL byte fails here
        loader.source = str(source)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else str(source)
        what = "; ".join(x for x in (exc.context, exc.problem) if x)
        raise ScenarioError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The YAML document in ``path`` (duplicate keys rejected, see :func:`load_yaml`); a
    missing or unreadable file is a :class:`ScenarioError` naming it as ``what``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start})") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    return load_yaml(text, path)


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "", *,
              infinite: bool = False) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values are errors.
    Floats must be finite unless ``infinite`` (then ``+inf`` is accepted: a TTL's "never")."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else str(k)
            raise ScenarioError(f"{full}: unknown key (expected one of {sorted(names)})")
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else k
        kwargs[k] = _coerce(v, hints[k], full, infinite)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ScenarioError(f"{prefix or cls.__name__}: {exc}") from None
    check = getattr(obj, "check", None)
    if callable(check):
        check(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass as plain dicts/lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def parse_assignment(text: str) -> tuple[str, Any]:
    """``'a.b=3'`` → ``('a.b', 3)``; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ScenarioError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ScenarioError(f"--set {text!r}: empty key")
    try:
        value = load_yaml(raw, "--set") if raw.strip() else ""
    except DuplicateKeyError as exc:  # a mapping, not text that merely fails to parse
        raise ScenarioError(f"--set {text!r}: {exc.reason}") from None
    except ScenarioError:  # not YAML: the text itself (e.g. a name with ': ' in it)
        value = raw
    return key, value


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``key='a.b'``, creating mappings on the way."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ScenarioError(f"{'.'.join(parts[: i + 1])}: is not a mapping, cannot set {key}")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a plain (nested) dict, in order; returns ``data``."""
    for item in overrides:
        key, value = parse_assignment(item) if isinstance(item, str) else item
        set_path(data, key, value)
    return data
