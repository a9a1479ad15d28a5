"""Plain data (decoded JSON or TOML, keyword arguments) into typed structs, with errors that
say where the faulty value is and what it must be.

The structs carry their own constraints (``Annotated[int, msgspec.Meta(ge=..., le=...)]``,
``Literal``, ``forbid_unknown_fields``); msgspec checks them in one pass. Its messages are
for programmers (``Expected `int` >= 1 - at `$.timeout```): :class:`Invalid` gives the
path as keys and what the value must be in words, read from the same type, so that each
caller can word the error for its users (a TOML key and its line, a JSON option).
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, TypeVar

import msgspec
from msgspec import inspect

T = TypeVar("T")
Path = tuple[str | int, ...]

_AT: Final = re.compile(
    r"^(?P<message>.*?)(?: - at (?P<key>`key` in )?`(?P<path>\$[^`]*)`)?$", re.S
)
_SEGMENT: Final = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN: Final = re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.S)
_MISSING: Final = re.compile(r"^Object missing required field `(?P<name>.*)`$", re.S)
_infos: dict[Any, inspect.Type] = {}


class Invalid(Exception):
    """A value that does not fit its type."""

    def __init__(
        self,
        path: Path,
        problem: Literal["unknown", "missing", "invalid"],
        expected: str,
        choices: tuple[str, ...] = (),
        reason: str | None = None,
    ) -> None:
        #: The keys from the root to the faulty value (or to the unknown or missing key).
        self.path = path
        self.problem = problem
        #: What the value must be, in words: "an integer from 1 to 10", "true or false".
        self.expected = expected
        #: With "unknown": the keys the object takes.
        self.choices = choices
        #: Said instead of "must be <expected>" when the type alone does not tell.
        self.reason = reason
        super().__init__(self.must())

    def must(self) -> str:
        """What is wrong, for the end of a message naming the value: "must be ..."."""
        if self.problem == "unknown":
            return f"is unknown; expected one of {', '.join(self.choices)}"
        return self.reason or f"must be {self.expected}"


def info(kind: Any) -> inspect.Type:
    """msgspec's description of a type, cached: it is read on every error and conversion."""
    found = _infos.get(kind)
    if found is None:
        found = _infos[kind] = inspect.type_info(kind)
    return found


def convert(raw: Any, kind: type[T], object_word: str = "an object") -> T:
    """``raw`` as a ``kind``, checked strictly (no string is taken for a number), except that
    a float with no fraction is taken for an integer: JSON has one number type, so 30000.0
    is 30000. Raises :class:`Invalid`; ``object_word`` names objects in its words."""
    root = info(kind)
    try:
        return msgspec.convert(_whole_numbers(raw, root), kind)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), root, object_word) from None


def _whole_numbers(value: Any, kind: inspect.Type) -> Any:
    """``value`` with each float that has no fraction and stands where ``kind`` wants an
    integer replaced by that integer; anything else as it is, for msgspec to judge."""
    if isinstance(kind, inspect.Metadata):
        kind = kind.type
    if isinstance(kind, inspect.UnionType):
        ints = [t for t in kind.types if isinstance(t, inspect.IntType | inspect.Metadata)]
        structs = [t for t in kind.types if isinstance(t, inspect.StructType)]
        if len(ints) == 1 and not any(isinstance(t, inspect.FloatType) for t in kind.types):
            kind = ints[0]
        elif len(structs) == 1 and isinstance(value, dict):  # an optional struct, e.g. rate
            kind = structs[0]
    if isinstance(kind, inspect.IntType):
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)
    elif isinstance(kind, inspect.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f.type for f in kind.fields}
        return {k: _whole_numbers(v, fields[k]) if k in fields else v for k, v in value.items()}
    elif isinstance(kind, inspect.DictType) and isinstance(value, dict):
        return {k: _whole_numbers(v, kind.value_type) for k, v in value.items()}
    elif isinstance(kind, inspect.ListType) and isinstance(value, list):
        return [_whole_numbers(v, kind.item_type) for v in value]
    return value


def _invalid(text: str, root: inspect.Type, object_word: str) -> Invalid:
    match = _AT.match(text)
    assert match is not None  # the pattern matches any text
    message = match["message"]
    path: list[str | int] = []
    kind: inspect.Type | None = root
    # msgspec writes a dict's keys as [...]: the path stops there (callers convert the
    # values of such dicts one by one, knowing their keys).
    for name, index in _SEGMENT.findall((match["path"] or "$")[1:]):
        if index == "...":
            break
        step: str | int = name or int(index)
        path.append(step)
        kind = _child(kind, step)
    unknown = _UNKNOWN.match(message)
    key = unknown or _MISSING.match(message)
    if key:
        fields = _fields(kind)
        expected = describe(fields.get(key["name"]), object_word)
        problem: Literal["unknown", "missing"] = "unknown" if unknown else "missing"
        return Invalid((*path, key["name"]), problem, expected, tuple(fields))
    expected = describe(kind, object_word)
    if match["key"]:
        expected = f"{object_word} with string keys"
    return Invalid(tuple(path), "invalid", expected)


def _fields(kind: inspect.Type | None) -> dict[str, inspect.Type]:
    if isinstance(kind, inspect.Metadata):
        kind = kind.type
    if isinstance(kind, inspect.StructType):
        return {f.encode_name: f.type for f in kind.fields}
    return {}


def _child(kind: inspect.Type | None, step: str | int) -> inspect.Type | None:
    if isinstance(kind, inspect.Metadata):
        kind = kind.type
    if isinstance(kind, inspect.UnionType):
        inner = [t for t in kind.types if not isinstance(t, inspect.NoneType)]
        kind = inner[0] if len(inner) == 1 else None
    if isinstance(kind, inspect.StructType) and isinstance(step, str):
        return _fields(kind).get(step)
    if isinstance(kind, inspect.DictType) and isinstance(step, str):
        return kind.value_type
    if isinstance(kind, inspect.ListType) and isinstance(step, int):
        return kind.item_type
    return None


def describe(kind: inspect.Type | None, object_word: str = "an object") -> str:
    """What a value of this type is, in words for users; a ``Meta(description=...)`` on the
    type is used as it is."""
    match kind:
        case inspect.Metadata(extra_json_schema={"description": str() as text}):
            return text
        case inspect.Metadata():
            return describe(kind.type, object_word)
        case inspect.BoolType():
            return "true or false"
        case inspect.IntType() | inspect.FloatType():
            noun = "an integer" if isinstance(kind, inspect.IntType) else "a number"
            return _ranged(noun, kind)
        case inspect.StrType(min_length=int() as least) if least > 0:
            return "a non-empty string"
        case inspect.StrType():
            return "a string"
        case inspect.LiteralType(values=values):
            return "one of " + ", ".join(str(v) for v in values)
        case inspect.DictType() | inspect.StructType() | inspect.TypedDictType():
            return object_word
        case inspect.ListType(item_type=inspect.StrType()):
            return "an array of strings"
        case inspect.ListType():
            return "an array"
        case inspect.UnionType(types=types):
            return " or ".join(
                describe(t, object_word) for t in types if not isinstance(t, inspect.NoneType)
            )
    return "a valid value"


def _ranged(noun: str, kind: inspect.IntType | inspect.FloatType) -> str:
    low = kind.ge if kind.ge is not None else kind.gt
    if kind.gt == 0 and kind.le is None and kind.lt is None:
        return f"a positive {noun.split()[1]}"
    if kind.ge is not None and kind.le is not None:
        return f"{noun} from {kind.ge} to {kind.le}"
    if low is not None:
        return f"{noun} {'>=' if kind.ge is not None else '>'} {low}"
    if kind.le is not None:
        return f"{noun} <= {kind.le}"
    return noun
