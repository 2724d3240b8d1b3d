"""The shared `class Args` behaviour of every script.

Each script declares `class Args(Config)` with typed, commented class attributes that a user edits. This module
turns those attributes into a configuration object that:

* takes strict ``--key=value`` overrides from the command line (unknown key or wrong type: a `ValueError` naming the
  key, the value received and the type expected);
* is saved as ``args.json`` beside a run's outputs and loaded back, so evaluation rebuilds exactly the trained network.

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``list[T]`` and ``T | None`` of those.
"""

from __future__ import annotations

import ast
import copy
import json
import types
import typing
from pathlib import Path
from typing import Any, Iterable

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def _check(key: str, value: Any, tp: Any, raw: Any) -> Any:
    """Returns `value` converted to `tp`, or raises a ValueError naming key, value and expected type."""
    origin = typing.get_origin(tp)
    problem = ValueError(f"Args: {key}={raw!r} is not a valid {_type_name(tp)}")
    if origin in (types.UnionType, typing.Union):
        members = typing.get_args(tp)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return _check(key, value, member, raw)
            except ValueError:
                pass
        raise problem
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise problem
        (item_type,) = typing.get_args(tp)
        try:
            return [_check(key, item, item_type, raw) for item in value]
        except ValueError:
            raise problem from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise problem
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise problem
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise problem
    if tp is str:
        if isinstance(value, str):
            return value
        raise problem
    raise TypeError(f"Args: field {key} has an unsupported type {tp!r}")


def _parse_cli_value(text: str, tp: Any) -> Any:
    """Parses a command-line string for a field of type `tp` (strings need no quotes; lists may be comma-separated)."""
    members = [m for m in typing.get_args(tp) if m is not type(None)] if typing.get_origin(tp) in (
        types.UnionType, typing.Union) else [tp]
    if text == "None" and len(members) < len(typing.get_args(tp) or [tp]):
        return None
    if members == [str]:
        return text
    if members == [bool] and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    else:
        # A single item for a list field ("--lr_steps=40000") is that one-element list.
        wants_list = any(typing.get_origin(m) is list for m in members)
        return [value] if wants_list and not isinstance(value, (list, tuple)) else value
    if any(typing.get_origin(m) is list for m in members):
        item_type = typing.get_args(next(m for m in members if typing.get_origin(m) is list))[0]
        items = [item.strip() for item in text.strip("[]").split(",") if item.strip()]
        return [_parse_cli_value(item, item_type) for item in items]
    return text


class Config:
    """Base of every script's `class Args`: typed defaults, strict overrides, args.json round trip."""

    def __init__(self, **overrides: Any) -> None:
        fields = self.fields()
        for key, tp in fields.items():
            setattr(self, key, copy.deepcopy(getattr(type(self), key)))
        for key, value in overrides.items():
            self.set(key, value)

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Field name -> type, base classes first, for every annotated class attribute with a default."""
        result: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            if klass in (Config, object):
                continue
            hints = typing.get_type_hints(klass)
            for key in vars(klass).get("__annotations__", {}):
                if not hasattr(klass, key):
                    raise TypeError(f"Args field {key} of {klass.__name__} needs a default value")
                result[key] = hints[key]
        return result

    def set(self, key: str, value: Any, raw: Any = None) -> None:
        """Sets one field after checking its type; unknown keys raise ValueError listing the known ones."""
        fields = self.fields()
        if key not in fields:
            raise ValueError(f"Args: unknown key {key!r} (value {value!r}); known keys: {', '.join(fields)}")
        setattr(self, key, _check(key, value, fields[key], value if raw is None else raw))

    @classmethod
    def from_cli(cls, argv: Iterable[str]) -> "Config":
        """Builds Args from the defaults and ``--key=value`` arguments."""
        args = cls()
        fields = cls.fields()
        for item in argv:
            if not item.startswith("--") or "=" not in item:
                raise ValueError(f"Args: expected --key=value, received {item!r}")
            key, text = item[2:].split("=", 1)
            if key not in fields:
                raise ValueError(f"Args: unknown key {key!r} (value {text!r}); known keys: {', '.join(fields)}")
            args.set(key, _parse_cli_value(text, fields[key]), raw=text)
        return args

    def to_dict(self) -> dict[str, Any]:
        return {key: copy.deepcopy(getattr(self, key)) for key in self.fields()}

    def save(self, path: str | Path) -> Path:
        """Writes the resolved Args as JSON (``args.json`` beside a run's outputs); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, strict: bool = True) -> "Config":
        """Reads an ``args.json``. With strict=False, keys this class does not know are ignored (another script's)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of Args fields, got {type(values).__name__}")
        fields = cls.fields()
        if not strict:
            values = {k: v for k, v in values.items() if k in fields}
        try:
            return cls(**values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.fields())
        return f"{type(self).__name__}({body})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()


def setup_logging(log_file: str | Path | None = None, level: int = 20) -> None:
    """Logs to the console and, when given, to `log_file` (created with its folder); INFO by default."""
    import logging

    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers,
                        force=True)
