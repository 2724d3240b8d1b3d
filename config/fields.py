"""The fields of a script's `class Args`: the rules each declares, and `Config`, the base class that checks them.

Each script declares `class Args(Config)` with typed, commented class attributes that a user edits. `Config` turns
those attributes into a configuration object that:

* takes strict ``--key=value`` overrides from the command line (unknown key or wrong type: a `ValueError` naming the
  key, the value received and the type expected);
* is saved as ``args.json`` beside a run's outputs and loaded back, so evaluation rebuilds exactly the trained network.

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``list[T]`` and ``T | None`` of those, and `ImageSize`
/ `ImageSizeOrNetwork` (one int N means N x N). Every field also declares what it allows, checked whenever a value is
set (defaults, ``--key=value``, args.json): ``Annotated[int, Range(1)]``, ``Annotated[str, Choices("bn", "gn")]``,
``Annotated[list[float], Range(0), Length(1)]`` (rules of a list apply to each item), `RequiredPath` / `OptionalPath`.
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterable

from common.files import write_replacing

log = logging.getLogger(__name__)

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class _ImageSizeRule:
    """Marks a list[int] field as an image size: one int N (or [N]) means [N, N]; two positive ints [height, width]."""

    allow_empty: bool  # [] is allowed and means "the network's own input size"

    @property
    def name(self) -> str:
        return "image size or []" if self.allow_empty else "image size"

    @property
    def detail(self) -> str:
        return "one positive int N for N x N, or [height,width]" + (", or [] for the network's own" if
                                                                     self.allow_empty else "")

    def normalise(self, value: Any) -> Any:
        """[N, N] for N or [N]; the value unchanged otherwise (checked by `check`)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return [value, value]
        if isinstance(value, (list, tuple)) and len(value) == 1:
            return [value[0], value[0]]
        return value

    def check(self, value: list[int]) -> bool:
        if not value:
            return self.allow_empty
        return len(value) == 2 and all(side > 0 for side in value)


# Field types for an image size: `image_size: ImageSize = [112, 112]` takes 48, [48] or [48, 48] alike.
ImageSize = Annotated[list[int], _ImageSizeRule(allow_empty=False)]
ImageSizeOrNetwork = Annotated[list[int], _ImageSizeRule(allow_empty=True)]


@dataclass(frozen=True)
class Range:
    """A number field (or each item of a list field; None passes) within bounds; None = unbounded on that side.

    ``Annotated[int, Range(1)]``: 1 or more. ``Annotated[float, Range(0, 1, high_open=True)]``: 0 <= x < 1. Where 0
    means "off", the range starts at 0 and the field's comment says so.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low bound itself is refused
    high_open: bool = False

    @property
    def detail(self) -> str:
        parts = [f"{'>' if self.low_open else '>='} {cli_text(self.low)}" if self.low is not None else "",
                 f"{'<' if self.high_open else '<='} {cli_text(self.high)}" if self.high is not None else ""]
        return " and ".join(part for part in parts if part) or "any number"

    def normalise(self, value: Any) -> Any:
        return value

    def check(self, value: Any) -> bool:
        return all(_within(item, self) for item in _items(value))


def _within(number: float, bounds: Range) -> bool:
    if not math.isfinite(number):  # NaN compares false with everything; inf passes an open-ended range
        return False
    low_ok = bounds.low is None or (number > bounds.low if bounds.low_open else number >= bounds.low)
    high_ok = bounds.high is None or (number < bounds.high if bounds.high_open else number <= bounds.high)
    return low_ok and high_ok


class Choices:
    """A field (or each item of a list field; None passes) that takes one of a fixed set of values:
    ``Annotated[str, Choices("bn", "gn", "brn")]``.

    `names` instead of values: a function returning them, called when first needed (a registry whose module loads
    Keras); `ignore_case` for names their user looks up in any letter case.
    """

    def __init__(self, *values: Any, names: Callable[[], Iterable[Any]] | None = None,
                 ignore_case: bool = False) -> None:
        self._values, self._names, self.ignore_case = tuple(values), names, ignore_case

    @property
    def values(self) -> tuple[Any, ...]:
        if self._names is not None:
            self._values, self._names = self._values + tuple(self._names()), None
        return self._values

    @property
    def detail(self) -> str:
        return "one of " + ", ".join(cli_text(value) for value in self.values)

    def normalise(self, value: Any) -> Any:
        return value

    def check(self, value: Any) -> bool:
        items = [self._fold(item) for item in _items(value)]
        explicit = {self._fold(choice) for choice in self._values}
        # The named choices (a Keras registry) are only looked up for a value outside the explicit ones.
        return all(item in explicit for item in items) or all(
            item in {self._fold(choice) for choice in self.values} for item in items)

    def _fold(self, item: Any) -> Any:
        return item.lower() if self.ignore_case and isinstance(item, str) else item


@dataclass(frozen=True)
class Length:
    """A list field with at least `low` (and at most `high`) items."""

    low: int
    high: int | None = None

    @property
    def detail(self) -> str:
        if self.high == self.low:
            return f"exactly {self.low} items"
        return f"{self.low} to {self.high} items" if self.high is not None else f"{self.low} or more items"

    def normalise(self, value: Any) -> Any:
        return value

    def check(self, value: Any) -> bool:
        return value is None or self.low <= len(value) <= (len(value) if self.high is None else self.high)


@dataclass(frozen=True)
class _PathRule:
    """A file or folder path (or each item of a list of names): no NUL character, and not empty when required."""

    required: bool

    @property
    def detail(self) -> str:
        return "a non-empty path" if self.required else 'a path, or "" for none'

    def normalise(self, value: Any) -> Any:
        return value

    def check(self, value: Any) -> bool:
        return all("\0" not in item and (item or not self.required) for item in _items(value))


def _items(value: Any) -> list[Any]:
    """The scalars a rule checks: the items of a list, the value itself, nothing for None."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


# The common ranges. NonNegativeInt is for counts where 0 is a value or means "off": the field's comment says which.
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]

# String fields that name a file or folder: RequiredPath must be given, OptionalPath takes "" for "none".
RequiredPath = Annotated[str, _PathRule(required=True)]
OptionalPath = Annotated[str, _PathRule(required=False)]


def registered_backbones() -> list[str]:
    """nets.registry's backbone names, for `Choices(names=registered_backbones)`: imported only when a backbone
    field is checked, since the registry loads Keras."""
    from nets.registry import backbone_names

    return backbone_names()


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        base, *rules = typing.get_args(tp)
        return next((rule.name for rule in rules if hasattr(rule, "name")), None) or type_name(base)
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " | ".join("None" if member is type(None) else type_name(member) for member in typing.get_args(tp))
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def allowed_text(tp: Any) -> str:
    """What the rules of a field type allow ("" when it has none), as --help and the errors show it."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        members = [allowed_text(member) for member in typing.get_args(tp) if member is not type(None)]
        return " | ".join(members) + (", or None" if any(members) and type(None) in typing.get_args(tp) else "")
    if typing.get_origin(tp) is list:
        return allowed_text(typing.get_args(tp)[0]) and f"each item {allowed_text(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is not Annotated:
        return ""
    base, *rules = typing.get_args(tp)
    return "; ".join([rule.detail for rule in rules] + [text for text in [allowed_text(base)] if text])


def _check(key: str, value: Any, tp: Any, raw: Any) -> Any:
    """Returns `value` converted to `tp`, or raises a ValueError naming key, value and expected type."""
    origin = typing.get_origin(tp)
    allowed = allowed_text(tp)
    problem = ValueError(f"Args: {key}={raw!r} is not a valid {type_name(tp)}" + (f" (expected {allowed})" if
                                                                                    allowed else ""))
    if origin is Annotated:
        base, *rules = typing.get_args(tp)
        for rule in rules:
            value = rule.normalise(value)
        try:
            value = _check(key, value, base, raw)
        except ValueError:
            raise problem from None
        if not all(rule.check(value) for rule in rules):
            raise problem
        return value
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
    if typing.get_origin(tp) is Annotated:
        return _parse_cli_value(text, typing.get_args(tp)[0])
    members = [m for m in typing.get_args(tp) if m is not type(None)] if typing.get_origin(tp) in (
        types.UnionType, typing.Union) else [tp]
    if text == "None" and len(members) < len(typing.get_args(tp) or [tp]):
        return None
    list_type = next((m for m in members if typing.get_origin(m) is list), None)
    if list_type is not None:
        # Item by item, so that list[str] takes unquoted digits as strings ("--ckpt_index_list=[10000,20000]") and
        # a single item ("--lr_steps=40000") is that one-element list.
        (item_type,) = typing.get_args(list_type)
        return [_parse_cli_item(item, item_type) for item in _split_list(text)]
    if members == [str]:
        return text
    if members == [bool] and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_list(text: str) -> list[str]:
    """The items of "[a, b]", "a,b" or "a": split at commas outside quotes, blanks dropped."""
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    items, current, quote = [], "", ""
    for char in inner:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            items.append(current.strip())
            current = ""
            continue
        current += char
    items.append(current.strip())
    return [item for item in items if item]


def _parse_cli_item(text: str, item_type: Any) -> Any:
    """One list item: a string as written (quotes removed when quoted), other types as a single value."""
    if item_type is str:
        quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""
        return ast.literal_eval(text) if quoted else text
    return _parse_cli_value(text, item_type)


class Config:
    """Base of every script's `class Args`: typed defaults, strict overrides, args.json round trip."""

    # Earlier name -> field name, for fields renamed since the seed or an earlier version: the earlier name is still
    # accepted (keyword, --key=value, args.json) and logged once as the field it now is.
    RENAMED: ClassVar[dict[str, str]] = {}

    def __init__(self, **overrides: Any) -> None:
        self._assign(self._current_names(overrides), {})

    @classmethod
    def _current_name(cls, key: str) -> str:
        """The field's name for `key`, which may be an earlier name (see RENAMED, logged)."""
        current = cls.RENAMED.get(key, key)
        if current != key:
            log.info("Args: %s is now called %s", key, current)
        return current

    @classmethod
    def _current_names(cls, values: dict[str, Any]) -> dict[str, Any]:
        """`values` with every earlier field name replaced by the field's name."""
        result: dict[str, Any] = {}
        for key, value in values.items():
            current = cls._current_name(key)
            if current != key and current in values:
                raise ValueError(f"Args: {key} (the earlier name of {current}) and {current} are both given")
            result[current] = value
        return result

    def _assign(self, overrides: dict[str, Any], raws: dict[str, str]) -> None:
        """Sets every field, from `overrides` or its default, each checked against its rules: a default that a
        user must replace (an empty RequiredPath) is refused as well, naming the key."""
        fields = self.fields()
        for key in overrides:
            if key not in fields:
                raise ValueError(f"Args: unknown key {key!r} (value {overrides[key]!r}); known keys: "
                                 f"{', '.join(fields)}")
        # The values given first: a bad one is reported before a required field that was left out.
        for key in [*overrides, *(key for key in fields if key not in overrides)]:
            value = overrides[key] if key in overrides else copy.deepcopy(getattr(type(self), key))
            setattr(self, key, _check(key, value, fields[key], raws.get(key, value)))

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Field name -> type, base classes first, for every annotated class attribute with a default."""
        result: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            if klass in (Config, object):
                continue
            hints = typing.get_type_hints(klass, include_extras=True)
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
        fields = cls.fields()
        values: dict[str, Any] = {}
        raws: dict[str, str] = {}
        given_as: dict[str, str] = {}  # field -> the name it was given under
        for item in argv:
            if not item.startswith("--") or "=" not in item:
                raise ValueError(f"Args: expected --key=value, received {item!r}")
            name, text = item[2:].split("=", 1)
            key = cls._current_name(name)
            if given_as.setdefault(key, name) != name:  # a repeated --key=value wins; two names of one field clash
                raise ValueError(f"Args: {key} is given twice, as --{given_as[key]} and as --{name}")
            if key not in fields:
                raise ValueError(f"Args: unknown key {key!r} (value {text!r}); known keys: {', '.join(fields)}")
            values[key], raws[key] = _parse_cli_value(text, fields[key]), text
        args = cls.__new__(cls)
        args._assign(values, raws)
        return args

    def to_dict(self) -> dict[str, Any]:
        return {key: copy.deepcopy(getattr(self, key)) for key in self.fields()}

    def save(self, path: str | Path) -> Path:
        """Writes the resolved Args as JSON (``args.json`` beside a run's outputs); returns the path."""
        return write_replacing(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

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
        try:
            values = cls._current_names(values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
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


def cli_text(value: Any) -> str:
    """A default as it would be typed on the command line."""
    if isinstance(value, list):
        return "[" + ",".join(cli_text(item) for item in value) + "]"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)
