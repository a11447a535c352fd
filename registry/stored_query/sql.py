"""SQL building blocks of the stored queries and the one place that runs them.

Every stored query is ONE SQL statement returning rows ``(kind, id, patient_id, ebrim)``:
kind names the object type, ebrim is the stored wire form (NULL for ObjectRef answers, so
nothing is fetched that will not be sent). Filters are added only for the parameters given,
so each combination of parameters has one stable SQL text, which asyncpg prepares once per
connection and re-uses. Patient queries lead with ``patient_id = ANY($1) AND status = ANY($2)``
(the patient id in its stored forms, see params.canonical_patient_id): the (patient_id, status) index.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ihe.metadata import vocabulary as v
from registry.stored_query.params import Parameters

log = logging.getLogger(__name__)

DOCUMENT_ENTRY = "DocumentEntry"
SUBMISSION_SET = "SubmissionSet"
FOLDER = "Folder"
ASSOCIATION = "Association"

# Order of object kinds in a response: documents, then the packages, then the associations.
KIND_ORDER = {DOCUMENT_ENTRY: 1, SUBMISSION_SET: 2, FOLDER: 3, ASSOCIATION: 4}


class Sql:
    """Collects positional arguments while a statement is written: ``sql.arg(x)`` gives ``$n``."""

    def __init__(self, leaf_class: bool) -> None:
        self.args: list[Any] = []
        self.leaf_class = leaf_class

    def arg(self, value: Any, cast: str = "") -> str:
        self.args.append(value)
        return f"${len(self.args)}{cast}"

    def ebrim(self, alias: str) -> str:
        """The ebrim column for LeafClass answers, NULL for ObjectRef ones."""
        return f"{alias}.ebrim" if self.leaf_class else "NULL::text"


@dataclass(frozen=True, slots=True)
class Statement:
    text: str
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ResultObject:
    kind: str
    id: str  # urn:uuid:...
    patient_id: str | None
    ebrim: str | None


# --- filters shared by the DocumentEntry queries --------------------------------------------------

# (parameter, column) of the DocumentEntry code parameters: one && test per OR group.
_DE_CODES = (
    ("$XDSDocumentEntryClassCode", "class_code"),
    ("$XDSDocumentEntryTypeCode", "type_code"),
    ("$XDSDocumentEntryPracticeSettingCode", "practice_setting_code"),
    ("$XDSDocumentEntryHealthcareFacilityTypeCode", "healthcare_facility_type_code"),
    ("$XDSDocumentEntryFormatCode", "format_code"),
    ("$XDSDocumentEntryEventCodeList", "event_code"),
    ("$XDSDocumentEntryConfidentialityCode", "confidentiality_code"),
)

# (parameter, column, operator): From is inclusive, To exclusive (ITI TF-2a 3.18.4.1.2.3.7.1).
_DE_TIMES = (
    ("$XDSDocumentEntryCreationTimeFrom", "creation_time", ">="),
    ("$XDSDocumentEntryCreationTimeTo", "creation_time", "<"),
    ("$XDSDocumentEntryServiceStartTimeFrom", "service_start_time", ">="),
    ("$XDSDocumentEntryServiceStartTimeTo", "service_start_time", "<"),
    ("$XDSDocumentEntryServiceStopTimeFrom", "service_stop_time", ">="),
    ("$XDSDocumentEntryServiceStopTimeTo", "service_stop_time", "<"),
)


def code_filter(sql: Sql, column: str, value: list[str] | list[list[str]]) -> list[str]:
    """``column && group`` for each OR group; several groups (AND/OR parameters) are ANDed."""
    groups = value if value and isinstance(value[0], list) else [value]
    return [f"{column} && {sql.arg(list(group), '::text[]')}" for group in groups]


def author_filter(sql: Sql, column: str, patterns: list[str]) -> str:
    """Some author of the object matches some pattern (SQL LIKE: % and _ wildcards, no escape character)."""
    return (f"EXISTS (SELECT 1 FROM unnest({column}) AS ap, unnest({sql.arg(patterns, '::text[]')}) AS pat "
            "WHERE ap LIKE pat ESCAPE '')")


def document_type_filter(sql: Sql, alias: str, params: Parameters) -> str:
    """$XDSDocumentEntryType: stable and/or on-demand; only stable entries when not given."""
    types = params.get("$XDSDocumentEntryType") or [v.DOCUMENT_ENTRY_STABLE]
    return f"{alias}.object_type = ANY({sql.arg(types, '::text[]')})"


def document_filters(sql: Sql, alias: str, params: Parameters) -> list[str]:
    """The WHERE conditions of every optional DocumentEntry parameter that was given."""
    conditions = [document_type_filter(sql, alias, params)]
    for name, column in _DE_CODES:
        if name in params:
            conditions += code_filter(sql, f"{alias}.{column}", params.get(name))
    for name, column, op in _DE_TIMES:
        if name in params:
            conditions.append(f"{alias}.{column} {op} {sql.arg(params.get(name))}")
    if "$XDSDocumentEntryAuthorPerson" in params:
        conditions.append(author_filter(sql, f"{alias}.author_person", params.get("$XDSDocumentEntryAuthorPerson")))
    if "$XDSDocumentEntryReferenceIdList" in params:
        ref_ids = params.get("$XDSDocumentEntryReferenceIdList")
        conditions.append(f"{alias}.reference_id && {sql.arg(ref_ids, '::text[]')}")
    return conditions


def where(conditions: Sequence[str]) -> str:
    return " AND ".join(conditions) if conditions else "TRUE"


def union_of(parts: Sequence[tuple[str, str]], limit_arg: str) -> str:
    """One result set from several ``(kind, select)`` parts, each selecting id, patient_id, ebrim, seq."""
    selects = [
        f"SELECT {KIND_ORDER[kind]} AS k, '{kind}' AS kind, id, patient_id, ebrim, seq FROM ({select}) AS p{i}"
        for i, (kind, select) in enumerate(parts)
    ]
    return (f"SELECT kind, id, patient_id, ebrim FROM ({' UNION ALL '.join(selects)}) AS r "
            f"ORDER BY k, seq LIMIT {limit_arg}")


async def fetch_objects(pool: asyncpg.Pool, statement: Statement) -> list[ResultObject]:
    """Run ``statement`` on a pooled connection (released without a server round trip, see
    ihe.database.create_pool)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(statement.text, *statement.args)
    return [ResultObject(r["kind"], f"urn:uuid:{r['id']}", r["patient_id"], r["ebrim"]) for r in rows]
