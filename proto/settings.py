"""A strict TOML/JSON -> frozen-dataclass builder, and the wire protocol version.

``build`` is the one loader both daemons use: unknown keys, wrong types and broken rules raise
``SettingsError`` naming the file and the key path (house rule 9), e.g.
``coordinator.toml: federation.train.bitz: unknown key (known: batch_size, bits, ...)``.
The typed federation plan built with it lives in ``federation/plan.py``; this module imports
nothing of ours, so ``proto`` stays in its layer.
"""
from __future__ import annotations

import dataclasses
import enum
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PROTOCOL_VERSION = 3  # 2: compact key directories (Advertisements.advertisers); 3: consistency check


class SettingsError(Exception):
    """A config file or settings document is invalid; the message names the file and key path."""


class FieldError(ValueError):
    """Raised by a dataclass's ``__post_init__`` to blame one key (a dotted path below the table).

    ``build`` turns it into ``SettingsError("<table>.<key>: <message>")``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def check_address(key: str, value: str, *, empty_ok: bool = False) -> None:
    """``value`` is ``host:port`` with a port in 1..65535 (0 too, "any free port", for a listen address).

    Raises:
        FieldError: naming ``key``.
    """
    if empty_ok and value == "":
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FieldError(key, f"{value!r} is not host:port (e.g. \"127.0.0.1:50051\")"
                         + (" or empty" if empty_ok else ""))


def check_range(obj: Any, key: str, *, low: float, high: float = float("inf"), low_open: bool = False) -> None:
    """``obj.<key>`` is a number in ``[low, high]`` (``(low, high]`` with ``low_open``), else FieldError."""
    value = getattr(obj, key)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value <= high \
        and (value > low if low_open else value >= low)
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise FieldError(key, f"{value!r} must be {bound}" + (f" and <= {high:g}" if high != float("inf") else ""))


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: expected a table, got {type(value).__name__}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, where)
            except SettingsError as exc:
                errors.append(str(exc))
        raise SettingsError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {type(value).__name__}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return tuple(_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: expected a table, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, str) and tp is not str:  # StrEnum
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(m.value for m in tp)  # type: ignore[attr-defined]
            raise SettingsError(f"{where}: {value!r} is not one of: {choices}") from None
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SettingsError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``: enums, nested dataclasses."""
    return _check(value, tp, where)


def build(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (unknown keys, wrong types and broken rules raise).

    Raises:
        SettingsError: ``"<where>.<key>: <what is wrong>"``; an unknown key lists the known ones.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise SettingsError(f"{_join(where, unknown[0])}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: _check(v, hints[k], _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        missing = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                   if f.name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise SettingsError(f"{_join(where, missing[0])}: required key is missing") from None
        raise SettingsError(f"{where or cls.__name__}: {exc}") from None
    except FieldError as exc:  # a rule blames one key
        raise SettingsError(f"{_join(where, exc.key)}: {exc.message}") from None
    except ValueError as exc:  # other dataclass invariants (__post_init__)
        raise SettingsError(f"{where or cls.__name__}: {exc}") from None


def load_toml(cls: type[T], path: str | Path) -> T:
    """Read a TOML file into ``cls``; errors name the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"config file {path} is a folder; give the .toml file in it") from None
    except PermissionError:
        raise SettingsError(f"config file {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not a TOML text file (not UTF-8 at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    try:
        return build(cls, data)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None


def key_paths(cls: type) -> list[str]:
    """Every dotted key path of dataclass ``cls``'s tree, tables included (``"federation.train.weights.similarity"``).

    The schema the example configs in ``deploy/config/`` are checked against.
    """
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        paths.append(f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            paths += [f"{f.name}.{sub}" for sub in key_paths(tp)]
    return paths


def to_plain(obj: Any) -> Any:
    """A dataclass tree as JSON-able dicts (enums become their values)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj
