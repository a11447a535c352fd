"""Stored query parameters: Slot values to typed values, with the errors ITI TF-2a 3.18.4.1.2.3.5 asks for.

Pure functions. Value syntax: a 'quoted string' ('' stands for one quote), an unquoted number
(times are DTM numbers) or a (list, of, those). The values of one Slot, across all its Value
elements, are ORed; a code parameter that allows AND/OR may be given in several Slots, which
are ANDed. Parsed values come out as:

- single-valued parameter: the converted value;
- multi-valued parameter: a list of converted values (OR);
- AND/OR parameter: a list of such lists (AND of ORs).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ihe.errors import ErrorCode, RegistryError, XDSError, error, warning
from ihe.metadata.model import dtm_to_datetime, is_valid_dtm


class ValueType(StrEnum):
    STRING = "string"
    CODE = "code"  # 'code^^^codingScheme' or the HL7 CE form 'code^^codingScheme'
    TIME = "time"  # HL7 DTM coded as a number
    PATIENT_ID = "patient id"  # CX 'id^^^&OID&ISO', converted to the list of its stored forms
    UUID = "uuid"  # 'urn:uuid:...'
    INTEGER = "integer"


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One row of a stored query's parameter table."""

    name: str
    type: ValueType
    required: bool = False
    multiple: bool = False  # several values, ORed
    and_or: bool = False  # several Slots of this name, ANDed (implies multiple)
    allowed: frozenset[str] | None = None  # literal values allowed, when the TF restricts them
    namespace: str | None = None  # every value must start with this (e.g. the ebRIM StatusType URN)


@dataclass(frozen=True, slots=True)
class SlotValues:
    """A query Slot as received: its name and the text of each of its Value elements."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scalar:
    """One item of a parameter value: a quoted string (unescaped) or a bare number."""

    text: str
    quoted: bool


@dataclass(slots=True)
class Parameters:
    """The converted parameters of one query (absent ones are missing from ``values``)."""

    values: dict[str, Any] = field(default_factory=dict)
    warnings: list[RegistryError] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self.values


class ValueSyntaxError(ValueError):
    """A Value element's text does not follow the stored query value syntax."""


_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def parse_value(text: str) -> tuple[list[Scalar], bool]:
    """Scan one Value element: its items and whether it was a parenthesised list."""
    pos = _skip_ws(text, 0)
    if pos < len(text) and text[pos] == "(":
        items: list[Scalar] = []
        pos = _skip_ws(text, pos + 1)
        if pos < len(text) and text[pos] == ")":
            pos += 1
        else:
            while True:
                item, pos = _scalar(text, pos)
                items.append(item)
                pos = _skip_ws(text, pos)
                if pos >= len(text):
                    raise ValueSyntaxError("the list is not closed with ')'")
                if text[pos] == ")":
                    pos += 1
                    break
                if text[pos] != ",":
                    raise ValueSyntaxError(f"expected ',' or ')' at position {pos + 1}")
                pos = _skip_ws(text, pos + 1)
        if _skip_ws(text, pos) != len(text):
            raise ValueSyntaxError(f"unexpected text after the list at position {pos + 1}")
        return items, True
    item, pos = _scalar(text, pos)
    if _skip_ws(text, pos) != len(text):
        raise ValueSyntaxError(f"unexpected text after the value at position {pos + 1} (a list needs parentheses)")
    return [item], False


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _scalar(text: str, pos: int) -> tuple[Scalar, int]:
    pos = _skip_ws(text, pos)
    if pos >= len(text):
        raise ValueSyntaxError("a value is missing")
    if text[pos] == "'":
        out: list[str] = []
        i = pos + 1
        while True:
            end = text.find("'", i)
            if end < 0:
                raise ValueSyntaxError("a quoted string is not closed with '")
            out.append(text[i:end])
            if end + 1 < len(text) and text[end + 1] == "'":  # '' is an escaped quote
                out.append("'")
                i = end + 2
                continue
            return Scalar("".join(out), True), end + 1
    m = _NUMBER.match(text, pos)
    if m is None:
        raise ValueSyntaxError(
            f"expected a 'quoted string', a number or a (list) at position {pos + 1}, found {text[pos:pos + 20]!r}"
        )
    return Scalar(m.group(0), False), m.end()


# --- conversion of one item ---------------------------------------------------------------------


def _convert(spec: ParamSpec, item: Scalar) -> Any:
    """The typed value of ``item`` or ValueError with a reason fit for the codeContext."""
    if spec.type is ValueType.TIME:
        if not is_valid_dtm(item.text):
            raise ValueError(f"{item.text!r} is not an HL7 DTM time (YYYY[MM[DD[hh[mm[ss]]]]])")
        return dtm_to_datetime(item.text)
    if spec.type is ValueType.INTEGER:
        if item.quoted or not item.text.lstrip("+-").isdigit():
            raise ValueError(f"{item.text!r} is not an unquoted integer")
        value: Any = int(item.text)
    else:
        if not item.quoted:
            raise ValueError(f"{item.text} must be a quoted string ('...')")
        value = item.text
        if spec.type is ValueType.CODE:
            value = _code(item.text)
        elif spec.type is ValueType.PATIENT_ID:
            value = canonical_patient_id(item.text)
        elif spec.type is ValueType.UUID:
            value = parse_urn_uuid(item.text)
    if spec.allowed is not None and item.text not in spec.allowed:
        raise ValueError(f"{item.text!r} is not one of {', '.join(sorted(spec.allowed))}")
    if spec.namespace is not None and not item.text.startswith(spec.namespace):
        raise ValueError(f"{item.text!r} is not a {spec.namespace}... value")
    return value


def _code(text: str) -> str:
    """The stored ``code^^^codingScheme`` key of a coded parameter value.

    ITI TF-2a 3.18.4.1.2.3.4 writes codes as ``code^^^codingScheme``; the NIST toolkit and many
    consumers send the HL7 CE form ``code^text^codingScheme`` (usually ``code^^codingScheme``).
    Both name the same code; the CE text, if any, is not part of the match.
    """
    parts = text.split("^")
    if len(parts) == 4 and parts[1] == parts[2] == "":
        code, scheme = parts[0], parts[3]
    elif len(parts) == 3:
        code, scheme = parts[0], parts[2]
    else:
        code = scheme = ""
    if not code.strip() or not scheme.strip():
        raise ValueError(f"{text!r} is not a code in the form 'code^^^codingScheme' or 'code^^codingScheme'")
    return f"{code}^^^{scheme}"


def canonical_patient_id(text: str) -> list[str]:
    """The stored forms an XDS patient id may have: ``id^^^&OID&ISO`` first, then with its namespace id.

    The schema's canonical form has no namespace id; a submitter that sent one may have it stored
    (``Identifiable.to_cx()``), so a query naming it matches both. The id must carry its OID.
    """
    parts = text.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    ident = parts[0].strip()
    if not ident or len(authority) < 3 or not authority[1].strip() or authority[2].strip() != "ISO":
        raise ValueError(f"{text!r} is not an XDS patient id in the form 'id^^^&OID&ISO'")
    oid = authority[1].strip()
    forms = [f"{ident}^^^&{oid}&ISO"]
    if authority[0].strip():
        forms.append(f"{ident}^^^{authority[0].strip()}&{oid}&ISO")
    return forms


def parse_urn_uuid(text: str) -> uuid.UUID:
    if not text.lower().startswith("urn:uuid:"):
        raise ValueError(f"{text!r} is not an entryUUID (urn:uuid:...)")
    try:
        return uuid.UUID(text[9:])
    except ValueError:
        raise ValueError(f"{text!r} is not an entryUUID (urn:uuid:...)") from None


# --- the whole parameter list ---------------------------------------------------------------------


def parse_parameters(
    specs: Sequence[ParamSpec],
    alternatives: Sequence[tuple[str, ...]],
    slots: Sequence[SlotValues],
) -> Parameters:
    """Check ``slots`` against a query's parameter table and convert them; raise XDSError listing every fault.

    Names are matched case-insensitively (some consumers send ``$XDSDocumentEntryPatientID``);
    a Slot that names no parameter of the query is answered with a warning, not silently dropped.
    """
    by_name = {s.name.lower(): s for s in specs}
    grouped: dict[str, list[SlotValues]] = {}
    result = Parameters()
    errors: list[RegistryError] = []
    faulty: set[str] = set()  # parameters already reported, so "missing" is not added on top
    for slot in slots:
        spec = by_name.get(slot.name.lower())
        if spec is None:
            result.warnings.append(warning(
                ErrorCode.REGISTRY_ERROR, f"parameter {slot.name} is not defined for this stored query; ignored"))
            continue
        grouped.setdefault(spec.name, []).append(slot)

    for spec in specs:
        group = grouped.get(spec.name)
        if not group:
            continue
        try:
            value = _parameter_value(spec, group)
        except XDSError as exc:
            errors.extend(exc.errors)
            faulty.add(spec.name)
            continue
        if value is not None:
            result.values[spec.name] = value

    for spec in specs:
        if spec.required and spec.name not in result.values and spec.name not in faulty:
            errors.append(error(ErrorCode.STORED_QUERY_MISSING_PARAM, f"required parameter {spec.name} is missing"))
    for names in alternatives:
        given = [n for n in names if n in result.values]
        if len(given) > 1:
            errors.append(error(ErrorCode.STORED_QUERY_PARAM_NUMBER,
                                f"only one of {' or '.join(names)} may be given, found {' and '.join(given)}"))
        elif not given and not faulty.intersection(names):
            errors.append(error(ErrorCode.STORED_QUERY_MISSING_PARAM,
                                f"one of {' or '.join(names)} is required"))
    if errors:
        raise XDSError(errors)
    return result


def _parameter_value(spec: ParamSpec, slots: list[SlotValues]) -> Any:
    """The converted value of one parameter from its Slot(s); None when they hold no value at all."""
    if len(slots) > 1 and not spec.and_or:
        raise XDSError.of(ErrorCode.STORED_QUERY_PARAM_NUMBER,
                          f"parameter {spec.name} is given in {len(slots)} Slots; it may appear once")
    groups: list[list[Any]] = []
    for slot in slots:
        items: list[Scalar] = []
        for text in slot.values:
            try:
                parsed, _is_list = parse_value(text)
            except ValueSyntaxError as exc:
                raise XDSError.of(ErrorCode.REGISTRY_ERROR,
                                  f"parameter {spec.name}: malformed value {text!r}: {exc}") from None
            items.extend(parsed)
        if not items:
            continue
        if not (spec.multiple or spec.and_or) and len(items) > 1:
            raise XDSError.of(ErrorCode.STORED_QUERY_PARAM_NUMBER,
                              f"parameter {spec.name} takes a single value, found {len(items)}")
        converted = []
        for item in items:
            try:
                converted.append(_convert(spec, item))
            except ValueError as exc:
                raise XDSError.of(ErrorCode.REGISTRY_ERROR, f"parameter {spec.name}: {exc}") from None
        groups.append(converted)
    if not groups:
        return None
    if spec.and_or:
        return groups
    if spec.multiple:
        return groups[0]
    return groups[0][0]
