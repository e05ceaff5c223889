"""How a configuration section is declared and checked: one place per setting.

A section is a frozen msgspec Struct (`Section`). Each field carries its type, its one default
and its constraints, as `Annotated[int, Meta(ge=1, le=65535)]`; a rule between fields of one
section is its `problems()` method, next to the fields it relates. The component that uses the
section reads it as it is: no copy of a default, a range or a name elsewhere.

`convert(raw, Model)` reports every problem at once, each as a `Problem` with its dotted key
(and the entry of a `[[list]]` table) so the caller can name the file's line:
1. every field is checked on its own (unknown or missing keys, wrong types, values outside
   their constraints, inf and nan, which TOML allows but no duration, rate or fraction means);
2. the fields found wrong are dropped (their defaults stand in) and the rules between fields
   of every section are checked on what is left, so a wrong port and a window too small for
   its reservation are both reported in one go. A rule about a key already reported is not
   repeated.
"""

from __future__ import annotations

import ipaddress
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

__all__ = [
    "DEVICE_ID_RE",
    "Baudrate",
    "DeviceId",
    "HexBytes",
    "InputSection",
    "OutputSection",
    "Pin",
    "Problem",
    "Section",
    "convert",
    "range_text",
]


@dataclass(frozen=True, slots=True)
class Problem:
    key: str  # dotted, from the top: "uplink.port"
    message: str
    entry: int | None = None  # the index of the [[table]] entry the key is in, if any


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or "localhost") is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A configuration section: frozen, no unknown keys, every field by name."""

    def problems(self) -> Iterator[tuple[str, str]]:
        """Rules between this section's fields, as (key relative to the section, message);
        only called once every field is valid on its own."""
        return iter(())


S = TypeVar("S", bound=Section)


def convert(raw: Mapping[str, Any], model: type[S]) -> tuple[S | None, list[Problem]]:
    """`raw` (parsed TOML) as `model`, and every problem found; the value is None when there
    is a problem (or nothing to check the rules between fields on: a required key missing)."""
    problems = list(_struct_problems(raw, model, "", None))
    if not problems:
        value = msgspec.convert(raw, type=model, strict=True)
        return value, list(_rule_problems(value, "", None, guarded=False))
    try:
        partial = _build(raw, model, problems, "")
    except TypeError:  # a required key is missing: no rule can be checked
        return None, problems
    reported = {p.key for p in problems}
    problems += [
        p for p in _rule_problems(partial, "", None, guarded=True) if p.key not in reported
    ]
    return None, problems


def range_text(info: mi.Type) -> str | None:
    """'must be between 1 and 65535' (or at least / above / at most / below) for a numeric
    type with bounds; None for any other."""
    if not isinstance(info, mi.IntType | mi.FloatType):
        return None
    low = f"at least {info.ge:g}" if info.ge is not None else None
    low = f"above {info.gt:g}" if info.gt is not None else low
    high = f"at most {info.le:g}" if info.le is not None else None
    high = f"below {info.lt:g}" if info.lt is not None else high
    if info.ge is not None and info.le is not None:
        return f"must be between {info.ge:g} and {info.le:g}"
    parts = [p for p in (low, high) if p]
    return f"must be {' and '.join(parts)}" if parts else None


# -- 1. each field on its own ------------------------------------------------------------------


def _struct_problems(
    raw: Any, model: type[Section], prefix: str, entry: int | None
) -> Iterator[Problem]:
    if not isinstance(raw, Mapping):
        yield Problem(prefix, f"must be a table, not {_kind(raw)}", entry)
        return
    fields = {f.encode_name: f for f in msgspec.structs.fields(model)}
    for key in raw:
        if key not in fields:
            yield Problem(_join(prefix, key), "unknown key", entry)
    for name, field in fields.items():
        key = _join(prefix, name)
        if name not in raw:
            if field.required and prefix:  # named at the table's line
                yield Problem(prefix, f"missing required key `{name}`", entry)
            elif field.required:
                yield Problem(key, f"missing required table `{name}`", entry)
            continue
        yield from _value_problems(raw[name], field.type, key, entry)


def _value_problems(value: Any, annotation: Any, key: str, entry: int | None) -> Iterator[Problem]:
    if value is None and _optional(annotation):
        return  # an optional section left out (a mapping made from a Config says so)
    section = _section_of(annotation)
    if section is not None:
        yield from _struct_problems(value, section, key, entry)
        return
    listed = _listed_section(annotation)
    if listed is not None:
        if not isinstance(value, list):
            yield Problem(key, f"must be a list of tables ([[{key}]]), not {_kind(value)}", entry)
            return
        low, high = _length_bounds(mi.type_info(annotation))
        if low is not None and len(value) < low:
            yield Problem(key, f"needs at least {low} entr{'y' if low == 1 else 'ies'}", entry)
        if high is not None and len(value) > high:
            yield Problem(key, f"takes at most {high} entries, not {len(value)}", entry)
        for index, item in enumerate(value):
            yield from _struct_problems(item, listed, key, index)
        return
    if _non_finite(value):
        yield Problem(key, "must be a finite number (inf and nan are not allowed)", entry)
        return
    try:
        msgspec.convert(value, type=annotation, strict=True)
    except msgspec.ValidationError as exc:
        yield Problem(key, _message(exc, value, annotation), entry)


def _message(exc: msgspec.ValidationError, value: Any, annotation: Any) -> str:
    """A bound named as a range ('must be between 1 and 65535'), with the field's
    description if it has one; msgspec's own words for a wrong type."""
    info = _leaf_info(mi.type_info(annotation), value)
    text = str(exc).split(" - at `", 1)[0]
    if info is not None and not text.endswith(f"got `{type(value).__name__}`"):
        text = range_text(info) or text
    description = _description(annotation)
    return f"{text} ({description})" if description else text


def _leaf_info(info: mi.Type, value: Any) -> mi.Type | None:
    """The numeric type `value` was checked against (inside a list, an optional or a
    description), or None."""
    if isinstance(info, mi.Metadata):
        return _leaf_info(info.type, value)
    if isinstance(info, mi.UnionType):
        for member in info.types:
            found = _leaf_info(member, value)
            if found is not None:
                return found
        return None
    if isinstance(info, mi.ListType) and isinstance(value, list):
        bad = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        return _leaf_info(info.item_type, bad[0]) if bad else None
    if isinstance(info, mi.IntType) and isinstance(value, int) and not isinstance(value, bool):
        return info
    if isinstance(info, mi.FloatType) and isinstance(value, int | float):
        return info if not isinstance(value, bool) else None
    return None


def _length_bounds(info: mi.Type) -> tuple[int | None, int | None]:
    """The (min_length, max_length) of a list type (inside an optional or a description)."""
    if isinstance(info, mi.Metadata):
        return _length_bounds(info.type)
    if isinstance(info, mi.UnionType):
        for member in info.types:
            if isinstance(member, mi.ListType | mi.Metadata):
                return _length_bounds(member)
    if isinstance(info, mi.ListType):
        return info.min_length, info.max_length
    return None, None


def _description(annotation: Any) -> str | None:
    info = mi.type_info(annotation)
    if isinstance(info, mi.UnionType):
        info = next((t for t in info.types if isinstance(t, mi.Metadata)), info)
    if isinstance(info, mi.Metadata) and info.extra_json_schema:
        found = info.extra_json_schema.get("description")
        return str(found) if found else None
    return None


# -- 2. the rules between fields, on what is valid -------------------------------------------


def _build(
    raw: Any, model: type[S], problems: list[Problem], prefix: str, entry: int | None = None
) -> S:
    """`model` from `raw` less what has a problem, to check the rules between fields on: a
    wrong optional field takes its default, a wrong required one keeps its raw value (a rule
    may then fail on it, see `_rule_problems`), an entry of a list of tables that is not a
    table is left out. TypeError when a required key is missing. (Struct constructors do not
    check constraints; lists of tables are not nested in one another.)"""
    kwargs: dict[str, Any] = {}
    for field in msgspec.structs.fields(model):
        key = _join(prefix, field.encode_name)
        if field.encode_name not in raw:
            continue
        value = raw[field.encode_name]
        wrong = any(p.key == key and p.entry == entry for p in problems)
        section, listed = _section_of(field.type), _listed_section(field.type)
        if wrong:
            if field.required:
                kwargs[field.name] = value
        elif value is None:
            kwargs[field.name] = None  # an optional section left out
        elif section is not None:
            kwargs[field.name] = _build(value, section, problems, key, entry)
        elif listed is not None:
            kwargs[field.name] = [
                _build(item, listed, problems, key, index)
                for index, item in enumerate(value)
                if isinstance(item, Mapping)
            ]
        else:
            kwargs[field.name] = msgspec.convert(value, type=field.type, strict=True)
    return model(**kwargs)


def _rule_problems(value: Any, prefix: str, entry: int | None, guarded: bool) -> Iterator[Problem]:
    """The rules of `value` and of every section in it. `guarded`: fields were found wrong and
    a required one may hold a raw value a rule cannot compare; such a rule is skipped (what
    it would say is about a key already reported)."""
    if not isinstance(value, Section):
        return
    try:
        found = list(value.problems())
    except (TypeError, ValueError, AttributeError):
        if not guarded:
            raise
        found = []
    for key, message in found:
        yield Problem(_join(prefix, key), message, entry)
    for name in value.__struct_fields__:
        child = getattr(value, name)
        key = _join(prefix, name)
        if isinstance(child, Section):
            yield from _rule_problems(child, key, entry, guarded)
        elif isinstance(child, list):
            for index, item in enumerate(child):
                yield from _rule_problems(item, key, index, guarded)


# -- types -------------------------------------------------------------------------------------


def _strip(annotation: Any) -> list[Any]:
    """The members of an annotation, Annotated and Optional removed."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _strip(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return [m for a in members for m in _strip(a)]
    return [annotation]


def _optional(annotation: Any) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        return _optional(typing.get_args(annotation)[0])
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(annotation)


def _section_of(annotation: Any) -> type[Section] | None:
    for member in _strip(annotation):
        if isinstance(member, type) and issubclass(member, Section):
            return member
    return None


def _listed_section(annotation: Any) -> type[Section] | None:
    for member in _strip(annotation):
        if typing.get_origin(member) is list:
            (item,) = typing.get_args(member)
            return _section_of(item)
    return None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# -- field types and sections several features share ----------------------------------------

DEVICE_ID = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DEVICE_ID_RE = re.compile(DEVICE_ID)
DeviceId = Annotated[
    str, Meta(pattern=DEVICE_ID, description="1-63 lower-case letters, digits, '_' or '-'")
]
LowerName = Annotated[
    str,
    Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="1-32 lower-case letters, digits, '_'"),
]
"""A name the configuration gives and refers to (an output, an on-call list)."""
Baudrate = Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600]
# -1: no pin (only "gpio" inputs and outputs use one); 0-27: a BCM pin of the 40-pin header.
Pin = Annotated[int, Meta(ge=-1, le=27, description="a BCM pin 0-27, or -1 for none")]
HexBytes = Annotated[
    str, Meta(pattern=r"^(\s*[0-9A-Fa-f]{2})*\s*$", description='hex bytes such as "A00101A2"')
]


class OutputSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A siren, light or relay (drivers.outputs)."""

    kind: Literal["log", "gpio", "serial_relay"] = "log"
    pin: Pin = -1
    active_high: bool = True
    url: str = ""
    baudrate: Baudrate = 9600
    on_bytes: HexBytes = ""  # e.g. "A00101A2"
    off_bytes: HexBytes = ""

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.kind == "gpio" and self.pin < 0:
            yield "pin", 'kind = "gpio" needs a BCM pin 0-27'
        if self.kind != "gpio" and self.pin != -1:
            yield "pin", 'only for kind = "gpio"'
        if self.kind == "serial_relay":
            if not self.url:
                yield "url", 'kind = "serial_relay" needs the relay board\'s url'
            if not self.on_bytes:
                yield "on_bytes", 'kind = "serial_relay" needs on_bytes, e.g. "A00101A2"'
            off = bytes.fromhex(self.off_bytes)
            if not off or off == bytes.fromhex(self.on_bytes):
                yield (
                    "off_bytes",
                    "needed to switch the output off: hex, not the same as on_bytes (e.g. "
                    '"A00100A1")',
                )
        elif self.url or self.on_bytes or self.off_bytes:
            yield "url", 'url/on_bytes/off_bytes are only for kind = "serial_relay"'


class InputSection(Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A contact or push button (drivers.door_contact)."""

    kind: Literal["none", "gpio", "simulated"] = "none"
    pin: Pin = -1
    pull_up: bool = True
    active_is_open: bool = True  # contact: the input reads active while the door is open

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.kind == "gpio" and self.pin < 0:
            yield "pin", 'kind = "gpio" needs a BCM pin 0-27'
