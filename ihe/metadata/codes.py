"""Affinity-domain code lists: which coded values the domain accepts for each XDS code attribute.

An XDS Affinity Domain agrees on the codes its sources may use (ITI TF-1 10.2.1); a registry that
enforces the list refuses metadata with other codes so that consumers' queries keep finding
documents. The list is a TOML file, one table per attribute::

    [classCode]
    codes = [ { code = "DI", scheme = "1.2.840.10008.2.16.4", display = "Diagnostic Imaging" } ]

An attribute absent from the file is not restricted. Parsing is a pure function over the decoded
TOML (:meth:`CodeList.from_mapping`); :func:`load_code_list` only adds the file read.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ihe.metadata.model import Code

#: Attribute names as in ITI TF-3 (folder codeList is spelled folderCodeList to keep it apart).
ATTRIBUTES = (
    "classCode",
    "typeCode",
    "formatCode",
    "healthcareFacilityTypeCode",
    "practiceSettingCode",
    "confidentialityCode",
    "eventCodeList",
    "contentTypeCode",
    "folderCodeList",
    "associationDocumentation",
)
_ATTRIBUTE_SET = frozenset(ATTRIBUTES)
_ENTRY_KEYS = frozenset({"code", "scheme", "display"})


@dataclass(frozen=True, slots=True)
class CodeList:
    """Allowed ``(code, scheme)`` pairs per attribute, with their display names.

    Only code and scheme decide membership: display names vary in case and language between
    sources, and the TF identifies a coded value by code and coding scheme.
    """

    entries: Mapping[str, Mapping[tuple[str, str], str | None]] = field(default_factory=dict)

    def allows(self, attribute: str, code: Code) -> bool:
        """True when ``attribute`` is unrestricted or lists ``code`` (same code and scheme)."""
        allowed = self.entries.get(attribute)
        return allowed is None or (code.code, code.scheme) in allowed

    def restricts(self, attribute: str) -> bool:
        return attribute in self.entries

    def attributes(self) -> frozenset[str]:
        """The attributes this list restricts."""
        return frozenset(self.entries)

    def display_name(self, attribute: str, code: str, scheme: str) -> str | None:
        """The display name the list gives for a code (None when unknown or not given)."""
        return self.entries.get(attribute, {}).get((code, scheme))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "code list") -> CodeList:
        """Build from decoded TOML; raise ValueError naming the first problem found."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a table of attributes")
        entries: dict[str, Mapping[tuple[str, str], str | None]] = {}
        for attribute, table in data.items():
            if attribute not in _ATTRIBUTE_SET:
                raise ValueError(
                    f"{source}: unknown attribute [{attribute}]; expected one of {', '.join(ATTRIBUTES)}"
                )
            where = f"{source} [{attribute}]"
            if not isinstance(table, Mapping):
                raise ValueError(f"{where}: expected a table with a 'codes' array")
            extra = set(table) - {"codes"}
            if extra:
                raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; only 'codes' is allowed")
            codes = table.get("codes")
            if not isinstance(codes, list):
                raise ValueError(f"{where}: 'codes' must be an array of {{ code, scheme, display }} tables")
            if not codes:
                raise ValueError(f"{where}: 'codes' is empty; leave the attribute out to allow any code")
            entries[attribute] = MappingProxyType(_parse_codes(codes, where))
        return cls(MappingProxyType(entries))


def _parse_codes(codes: list[Any], where: str) -> dict[tuple[str, str], str | None]:
    allowed: dict[tuple[str, str], str | None] = {}
    for i, entry in enumerate(codes, start=1):
        at = f"{where} code #{i}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at}: expected a table {{ code, scheme, display }}")
        extra = set(entry) - _ENTRY_KEYS
        if extra:
            raise ValueError(f"{at}: unknown key(s) {', '.join(sorted(extra))}; allowed: code, scheme, display")
        code, scheme, display = entry.get("code"), entry.get("scheme"), entry.get("display")
        for name, value in (("code", code), ("scheme", scheme)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{at}: '{name}' must be a non-empty string")
        if display is not None and not isinstance(display, str):
            raise ValueError(f"{at}: 'display' must be a string")
        key = (code, scheme)
        if key in allowed:
            raise ValueError(f"{at}: duplicate code '{code}' in scheme '{scheme}'")
        allowed[key] = display
    return allowed


def load_code_list(path: Path) -> CodeList:
    """Read a code list TOML file; ValueError (naming the file) when it is malformed."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    return CodeList.from_mapping(data, source=str(path))
