"""The stored queries of ITI TF-2a 3.18.4.1.2.3.7: their UUIDs, parameter tables and SQL.

One entry per query in :data:`STORED_QUERIES`. ``build(params, sql, limit)`` writes the single
SQL statement answering the query (pure: it only produces text and arguments); the handler runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ihe.metadata import vocabulary as v
from registry.stored_query.params import Parameters, ParamSpec, ValueType
from registry.stored_query.sql import (
    ASSOCIATION,
    DOCUMENT_ENTRY,
    FOLDER,
    SUBMISSION_SET,
    Sql,
    Statement,
    author_filter,
    code_filter,
    document_filters,
    document_type_filter,
    union_of,
    where,
)

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
FIND_FOLDERS = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
GET_ALL = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_FOLDERS = "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
GET_DOCUMENTS_AND_ASSOCIATIONS = "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a"
GET_SUBMISSION_SETS = "urn:uuid:51224314-5390-4169-9b91-b1980040715a"
GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
GET_FOLDER_AND_CONTENTS = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
GET_FOLDERS_FOR_DOCUMENT = "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578"
GET_RELATED_DOCUMENTS = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"

S, C, T, P, U = ValueType.STRING, ValueType.CODE, ValueType.TIME, ValueType.PATIENT_ID, ValueType.UUID

Builder = Callable[[Parameters, Sql, int], Statement]


@dataclass(frozen=True, slots=True)
class StoredQuery:
    name: str
    id: str
    params: tuple[ParamSpec, ...]
    build: Builder
    alternatives: tuple[tuple[str, ...], ...] = ()  # exactly one of each group must be given


# --- parameter tables -------------------------------------------------------------------------------

# Document Metadata Update adds $MetadataLevel to every query; without that option there is one
# version of everything, so levels 1 and 2 answer the same, and other values are refused.
METADATA_LEVEL = ParamSpec("$MetadataLevel", ValueType.INTEGER, allowed=frozenset({"1", "2"}))
HOME = ParamSpec("$homeCommunityId", S)
# Status values are ebRIM StatusType URNs and objectType values one of two UUIDs: a short form such as
# 'Approved' would match nothing, so it is refused (as the NIST toolkit does) rather than answered with
# an empty list. A StatusType this registry never stores (Withdrawn) just matches nothing.
STATUS_TYPE = "urn:oasis:names:tc:ebxml-regrep:StatusType:"
DE_TYPE = ParamSpec("$XDSDocumentEntryType", S, multiple=True,
                    allowed=frozenset({v.DOCUMENT_ENTRY_STABLE, v.DOCUMENT_ENTRY_ON_DEMAND}))
DE_FORMAT = ParamSpec("$XDSDocumentEntryFormatCode", C, multiple=True)
DE_CONFIDENTIALITY = ParamSpec("$XDSDocumentEntryConfidentialityCode", C, and_or=True)

FIND_DOCUMENTS_PARAMS = (
    ParamSpec("$XDSDocumentEntryPatientId", P, required=True),
    ParamSpec("$XDSDocumentEntryClassCode", C, multiple=True),
    ParamSpec("$XDSDocumentEntryTypeCode", C, multiple=True),
    ParamSpec("$XDSDocumentEntryPracticeSettingCode", C, multiple=True),
    ParamSpec("$XDSDocumentEntryCreationTimeFrom", T),
    ParamSpec("$XDSDocumentEntryCreationTimeTo", T),
    ParamSpec("$XDSDocumentEntryServiceStartTimeFrom", T),
    ParamSpec("$XDSDocumentEntryServiceStartTimeTo", T),
    ParamSpec("$XDSDocumentEntryServiceStopTimeFrom", T),
    ParamSpec("$XDSDocumentEntryServiceStopTimeTo", T),
    ParamSpec("$XDSDocumentEntryHealthcareFacilityTypeCode", C, multiple=True),
    ParamSpec("$XDSDocumentEntryEventCodeList", C, and_or=True),
    DE_CONFIDENTIALITY,
    ParamSpec("$XDSDocumentEntryAuthorPerson", S, multiple=True),
    DE_FORMAT,
    ParamSpec("$XDSDocumentEntryStatus", S, required=True, multiple=True, namespace=STATUS_TYPE),
    DE_TYPE,
    METADATA_LEVEL,
)


def _by_id_or_unique_id(prefix: str, multiple: bool, logical: bool = False) -> tuple[ParamSpec, ...]:
    specs = (ParamSpec(f"${prefix}EntryUUID", U, multiple=multiple),
             ParamSpec(f"${prefix}UniqueId", S, multiple=multiple))
    if logical:
        specs += (ParamSpec(f"${prefix}LogicalID", U, multiple=multiple),)
    return specs


def _alternatives(specs: tuple[ParamSpec, ...]) -> tuple[tuple[str, ...], ...]:
    return (tuple(s.name for s in specs),)


# --- Find* --------------------------------------------------------------------------------------------


def _find_documents(params: Parameters, sql: Sql, limit: int) -> Statement:
    conditions = [
        f"d.patient_id = ANY({sql.arg(params.get('$XDSDocumentEntryPatientId'), '::text[]')})",
        f"d.status = ANY({sql.arg(params.get('$XDSDocumentEntryStatus'), '::text[]')})",
        "d.latest",  # ITI-57: older versions only when asked for by logicalID
        *document_filters(sql, "d", params),
    ]
    text = (f"SELECT '{DOCUMENT_ENTRY}' AS kind, d.id, d.patient_id, {sql.ebrim('d')} AS ebrim "
            f"FROM document_entry d WHERE {where(conditions)} ORDER BY d.seq LIMIT {sql.arg(limit)}")
    return Statement(text, tuple(sql.args))


def _find_submission_sets(params: Parameters, sql: Sql, limit: int) -> Statement:
    conditions = [
        f"s.patient_id = ANY({sql.arg(params.get('$XDSSubmissionSetPatientId'), '::text[]')})",
        f"s.status = ANY({sql.arg(params.get('$XDSSubmissionSetStatus'), '::text[]')})",
    ]
    if "$XDSSubmissionSetSourceId" in params:
        conditions.append(f"s.source_id = ANY({sql.arg(params.get('$XDSSubmissionSetSourceId'), '::text[]')})")
    if "$XDSSubmissionSetSubmissionTimeFrom" in params:
        conditions.append(f"s.submission_time >= {sql.arg(params.get('$XDSSubmissionSetSubmissionTimeFrom'))}")
    if "$XDSSubmissionSetSubmissionTimeTo" in params:
        conditions.append(f"s.submission_time < {sql.arg(params.get('$XDSSubmissionSetSubmissionTimeTo'))}")
    if "$XDSSubmissionSetAuthorPerson" in params:
        conditions.append(author_filter(sql, "s.author_person", [params.get("$XDSSubmissionSetAuthorPerson")]))
    if "$XDSSubmissionSetContentType" in params:
        conditions += code_filter(sql, "s.content_type_code", params.get("$XDSSubmissionSetContentType"))
    text = (f"SELECT '{SUBMISSION_SET}' AS kind, s.id, s.patient_id, {sql.ebrim('s')} AS ebrim "
            f"FROM submission_set s WHERE {where(conditions)} ORDER BY s.seq LIMIT {sql.arg(limit)}")
    return Statement(text, tuple(sql.args))


def _find_folders(params: Parameters, sql: Sql, limit: int) -> Statement:
    conditions = [
        f"f.patient_id = ANY({sql.arg(params.get('$XDSFolderPatientId'), '::text[]')})",
        f"f.status = ANY({sql.arg(params.get('$XDSFolderStatus'), '::text[]')})",
        "f.latest",
    ]
    if "$XDSFolderLastUpdateTimeFrom" in params:
        conditions.append(f"f.last_update_time >= {sql.arg(params.get('$XDSFolderLastUpdateTimeFrom'))}")
    if "$XDSFolderLastUpdateTimeTo" in params:
        conditions.append(f"f.last_update_time < {sql.arg(params.get('$XDSFolderLastUpdateTimeTo'))}")
    if "$XDSFolderCodeList" in params:
        conditions += code_filter(sql, "f.code", params.get("$XDSFolderCodeList"))
    text = (f"SELECT '{FOLDER}' AS kind, f.id, f.patient_id, {sql.ebrim('f')} AS ebrim "
            f"FROM folder f WHERE {where(conditions)} ORDER BY f.seq LIMIT {sql.arg(limit)}")
    return Statement(text, tuple(sql.args))


# --- GetAll -------------------------------------------------------------------------------------------


def _get_all(params: Parameters, sql: Sql, limit: int) -> Statement:
    """Everything of one patient in the statuses asked for, and the associations among those objects.

    An association is returned when both its ends are returned objects (first level) or when it
    links a returned package to such an association (a SubmissionSet's HasMember to a
    Folder-DocumentEntry association): no dangling references.
    """
    patient = sql.arg(params.get("$patientId"), "::text[]")
    de_conditions = [
        f"d.patient_id = ANY({patient})",
        f"d.status = ANY({sql.arg(params.get('$XDSDocumentEntryStatus'), '::text[]')})",
        "d.latest",
        document_type_filter(sql, "d", params),
    ]
    if "$XDSDocumentEntryFormatCode" in params:
        de_conditions += code_filter(sql, "d.format_code", params.get("$XDSDocumentEntryFormatCode"))
    if "$XDSDocumentEntryConfidentialityCode" in params:
        de_conditions += code_filter(sql, "d.confidentiality_code", params.get("$XDSDocumentEntryConfidentialityCode"))
    ss_status = sql.arg(params.get("$XDSSubmissionSetStatus"), "::text[]")
    fol_status = sql.arg(params.get("$XDSFolderStatus"), "::text[]")
    ctes = (
        f"WITH de AS (SELECT d.id, d.patient_id, {sql.ebrim('d')} AS ebrim, d.seq FROM document_entry d "
        f"WHERE {where(de_conditions)}), "
        f"ss AS (SELECT s.id, s.patient_id, {sql.ebrim('s')} AS ebrim, s.seq FROM submission_set s "
        f"WHERE s.patient_id = ANY({patient}) AND s.status = ANY({ss_status})), "
        f"fol AS (SELECT f.id, f.patient_id, {sql.ebrim('f')} AS ebrim, f.seq FROM folder f "
        f"WHERE f.patient_id = ANY({patient}) AND f.status = ANY({fol_status}) AND f.latest), "
        "objs AS (SELECT id FROM de UNION ALL SELECT id FROM ss UNION ALL SELECT id FROM fol), "
        f"a1 AS (SELECT a.id, NULL::text AS patient_id, {sql.ebrim('a')} AS ebrim, a.seq FROM association a "
        "WHERE a.source IN (SELECT id FROM objs) AND a.target IN (SELECT id FROM objs)), "
        f"a2 AS (SELECT a.id, NULL::text AS patient_id, {sql.ebrim('a')} AS ebrim, a.seq FROM association a "
        "WHERE a.source IN (SELECT id FROM objs) AND a.target IN (SELECT id FROM a1)) "
    )
    body = union_of([
        (DOCUMENT_ENTRY, "SELECT * FROM de"),
        (SUBMISSION_SET, "SELECT * FROM ss"),
        (FOLDER, "SELECT * FROM fol"),
        (ASSOCIATION, "SELECT * FROM a1 UNION ALL SELECT * FROM a2"),
    ], sql.arg(limit))
    return Statement(ctes + body, tuple(sql.args))


# --- Get* by id -----------------------------------------------------------------------------------------


def _match_ids(sql: Sql, alias: str, params: Parameters, prefix: str) -> str:
    """The condition selecting objects by the one of entryUUID / uniqueId / logicalID that was given.

    Folders and SubmissionSets have no index on unique_id: their uniqueIds are found through
    unique_id_claim (primary key unique_id), which holds every uniqueId of the registry.
    """
    for suffix, column, cast in (("EntryUUID", "id", "uuid"), ("UniqueId", "unique_id", "text"),
                                 ("LogicalID", "lid", "uuid")):
        name = f"${prefix}{suffix}"
        if name not in params:
            continue
        value = params.get(name)
        arg = sql.arg(value, f"::{cast}[]" if isinstance(value, list) else f"::{cast}")
        test = f"= ANY({arg})" if isinstance(value, list) else f"= {arg}"
        if column == "unique_id" and prefix != "XDSDocumentEntry":
            claimed = f"SELECT c.object_id FROM unique_id_claim c WHERE c.unique_id {test}"
            if prefix == "XDSFolder":  # the claim names the first version; all versions share its lid
                return (f"{alias}.lid IN (SELECT x.lid FROM folder x WHERE x.id IN ({claimed})) "
                        f"AND {alias}.latest AND {alias}.unique_id {test}")
            return f"{alias}.id IN ({claimed}) AND {alias}.unique_id {test}"
        # ITI-57 versions share lid and uniqueId: the latest one, unless $MetadataLevel 2 asks for all by lid
        every = column == "lid" and params.get("$MetadataLevel") == 2
        latest = "" if column == "id" or every else f" AND {alias}.latest"
        return f"{alias}.{column} {test}{latest}"
    raise AssertionError(f"no {prefix} identifier parameter: the parameter check must have refused the query")


def _get_documents(params: Parameters, sql: Sql, limit: int) -> Statement:
    text = (f"SELECT '{DOCUMENT_ENTRY}' AS kind, d.id, d.patient_id, {sql.ebrim('d')} AS ebrim "
            f"FROM document_entry d WHERE {_match_ids(sql, 'd', params, 'XDSDocumentEntry')} "
            f"ORDER BY d.seq LIMIT {sql.arg(limit)}")
    return Statement(text, tuple(sql.args))


def _get_folders(params: Parameters, sql: Sql, limit: int) -> Statement:
    text = (f"SELECT '{FOLDER}' AS kind, f.id, f.patient_id, {sql.ebrim('f')} AS ebrim "
            f"FROM folder f WHERE {_match_ids(sql, 'f', params, 'XDSFolder')} "
            f"ORDER BY f.seq LIMIT {sql.arg(limit)}")
    return Statement(text, tuple(sql.args))


def _association_columns(sql: Sql) -> str:
    return f"a.id, NULL::text AS patient_id, {sql.ebrim('a')} AS ebrim, a.seq"


def _get_associations(params: Parameters, sql: Sql, limit: int) -> Statement:
    """Associations with any of $uuid as source or target (two index scans, not one OR)."""
    uuids = sql.arg(params.get("$uuid"), "::uuid[]")
    cols = _association_columns(sql)
    body = union_of([(ASSOCIATION, f"SELECT {cols} FROM association a WHERE a.source = ANY({uuids}) "
                                   f"UNION SELECT {cols} FROM association a WHERE a.target = ANY({uuids})")],
                    sql.arg(limit))
    return Statement(body, tuple(sql.args))


def _get_documents_and_associations(params: Parameters, sql: Sql, limit: int) -> Statement:
    cols = _association_columns(sql)
    text = (
        f"WITH de AS (SELECT d.id, d.patient_id, {sql.ebrim('d')} AS ebrim, d.seq FROM document_entry d "
        f"WHERE {_match_ids(sql, 'd', params, 'XDSDocumentEntry')}) "
        + union_of([
            (DOCUMENT_ENTRY, "SELECT * FROM de"),
            (ASSOCIATION, f"SELECT {cols} FROM association a WHERE a.source IN (SELECT id FROM de) "
                          f"UNION SELECT {cols} FROM association a WHERE a.target IN (SELECT id FROM de)"),
        ], sql.arg(limit))
    )
    return Statement(text, tuple(sql.args))


def _get_submission_sets(params: Parameters, sql: Sql, limit: int) -> Statement:
    """The SubmissionSets that hold any of $uuid as members, and those HasMember associations."""
    text = (
        f"WITH m AS (SELECT {_association_columns(sql)}, a.source FROM association a "
        f"JOIN submission_set s ON s.id = a.source "
        f"WHERE a.target = ANY({sql.arg(params.get('$uuid'), '::uuid[]')}) AND a.type = '{v.HAS_MEMBER}') "
        + union_of([
            (SUBMISSION_SET, f"SELECT s.id, s.patient_id, {sql.ebrim('s')} AS ebrim, s.seq FROM submission_set s "
                             "WHERE s.id IN (SELECT source FROM m)"),
            (ASSOCIATION, "SELECT id, patient_id, ebrim, seq FROM m"),
        ], sql.arg(limit))
    )
    return Statement(text, tuple(sql.args))


def _content_filters(sql: Sql, params: Parameters) -> list[str]:
    """$XDSDocumentEntryFormatCode, $XDSDocumentEntryConfidentialityCode and $XDSDocumentEntryType on d."""
    conditions = [document_type_filter(sql, "d", params)]
    if "$XDSDocumentEntryFormatCode" in params:
        conditions += code_filter(sql, "d.format_code", params.get("$XDSDocumentEntryFormatCode"))
    if "$XDSDocumentEntryConfidentialityCode" in params:
        conditions += code_filter(sql, "d.confidentiality_code", params.get("$XDSDocumentEntryConfidentialityCode"))
    return conditions


def _get_submission_set_and_contents(params: Parameters, sql: Sql, limit: int) -> Statement:
    """The SubmissionSet, its member DocumentEntries (filtered), Folders and Associations, and its HasMembers.

    A DocumentEntry left out by the filters takes with it the member associations that name it
    and the SubmissionSet's HasMember to it, so that no returned association points at an
    object the answer leaves out.
    """
    cols = _association_columns(sql)
    text = (
        f"WITH ss AS (SELECT s.id, s.patient_id, {sql.ebrim('s')} AS ebrim, s.seq FROM submission_set s "
        f"WHERE {_match_ids(sql, 's', params, 'XDSSubmissionSet')}), "
        f"m AS (SELECT {cols}, a.target FROM association a "
        f"WHERE a.source IN (SELECT id FROM ss) AND a.type = '{v.HAS_MEMBER}'), "
        f"de AS (SELECT d.id, d.patient_id, {sql.ebrim('d')} AS ebrim, d.seq FROM document_entry d "
        f"WHERE d.id IN (SELECT target FROM m) AND {where(_content_filters(sql, params))}), "
        "dropped AS (SELECT d.id FROM document_entry d WHERE d.id IN (SELECT target FROM m) "
        "EXCEPT SELECT id FROM de), "
        f"fol AS (SELECT f.id, f.patient_id, {sql.ebrim('f')} AS ebrim, f.seq FROM folder f "
        "WHERE f.id IN (SELECT target FROM m)), "
        f"ma AS (SELECT {cols} FROM association a WHERE a.id IN (SELECT target FROM m) "
        "AND a.source NOT IN (SELECT id FROM dropped) AND a.target NOT IN (SELECT id FROM dropped)), "
        "kept AS (SELECT id FROM de UNION ALL SELECT id FROM fol UNION ALL SELECT id FROM ma) "
        + union_of([
            (DOCUMENT_ENTRY, "SELECT * FROM de"),
            (SUBMISSION_SET, "SELECT * FROM ss"),
            (FOLDER, "SELECT * FROM fol"),
            (ASSOCIATION, "SELECT id, patient_id, ebrim, seq FROM m WHERE target IN (SELECT id FROM kept) "
                          "UNION ALL SELECT * FROM ma"),
        ], sql.arg(limit))
    )
    return Statement(text, tuple(sql.args))


def _get_folder_and_contents(params: Parameters, sql: Sql, limit: int) -> Statement:
    """The Folder, its member DocumentEntries (filtered) and the HasMember associations to those."""
    cols = _association_columns(sql)
    text = (
        f"WITH fol AS (SELECT f.id, f.patient_id, {sql.ebrim('f')} AS ebrim, f.seq FROM folder f "
        f"WHERE {_match_ids(sql, 'f', params, 'XDSFolder')}), "
        f"m AS (SELECT {cols}, a.target FROM association a "
        f"WHERE a.source IN (SELECT id FROM fol) AND a.type = '{v.HAS_MEMBER}' AND a.status = '{v.STATUS_APPROVED}'), "
        f"de AS (SELECT d.id, d.patient_id, {sql.ebrim('d')} AS ebrim, d.seq FROM document_entry d "
        f"WHERE d.id IN (SELECT target FROM m) AND d.latest AND {where(_content_filters(sql, params))}) "
        + union_of([
            (DOCUMENT_ENTRY, "SELECT * FROM de"),
            (FOLDER, "SELECT * FROM fol"),
            (ASSOCIATION, "SELECT id, patient_id, ebrim, seq FROM m WHERE target IN (SELECT id FROM de)"),
        ], sql.arg(limit))
    )
    return Statement(text, tuple(sql.args))


def _get_folders_for_document(params: Parameters, sql: Sql, limit: int) -> Statement:
    text = (
        f"WITH de AS (SELECT d.id FROM document_entry d WHERE {_match_ids(sql, 'd', params, 'XDSDocumentEntry')}) "
        f"SELECT '{FOLDER}' AS kind, f.id, f.patient_id, {sql.ebrim('f')} AS ebrim FROM folder f "
        f"WHERE f.id IN (SELECT a.source FROM association a WHERE a.target IN (SELECT id FROM de) "
        f"AND a.type = '{v.HAS_MEMBER}' AND a.status = '{v.STATUS_APPROVED}') AND f.latest "
        f"ORDER BY f.seq LIMIT {sql.arg(limit)}"
    )
    return Statement(text, tuple(sql.args))


def _get_related_documents(params: Parameters, sql: Sql, limit: int) -> Statement:
    """The document, the documents related to it by $AssociationTypes, and those associations.

    HasMember is not a relationship between documents and is left out of $AssociationTypes;
    $XDSDocumentEntryType filters the related documents. No related document: empty answer.
    """
    types = [t for t in params.get("$AssociationTypes") if t != v.HAS_MEMBER]
    types_arg = sql.arg(types, "::text[]")
    cols = _association_columns(sql)
    text = (
        f"WITH orig AS (SELECT d.id, d.patient_id, {sql.ebrim('d')} AS ebrim, d.seq FROM document_entry d "
        f"WHERE {_match_ids(sql, 'd', params, 'XDSDocumentEntry')}), "
        f"ra AS (SELECT {cols}, a.source, a.target FROM association a "
        f"WHERE a.source IN (SELECT id FROM orig) AND a.type = ANY({types_arg}) "
        f"UNION SELECT {cols}, a.source, a.target FROM association a "
        f"WHERE a.target IN (SELECT id FROM orig) AND a.type = ANY({types_arg})), "
        f"rel AS (SELECT d.id, d.patient_id, {sql.ebrim('d')} AS ebrim, d.seq FROM document_entry d "
        "WHERE d.id IN (SELECT source FROM ra UNION SELECT target FROM ra) "
        f"AND d.id NOT IN (SELECT id FROM orig) AND {document_type_filter(sql, 'd', params)}), "
        "kept AS (SELECT id, patient_id, ebrim, seq FROM ra "
        "WHERE source IN (SELECT id FROM rel) OR target IN (SELECT id FROM rel)) "
        + union_of([
            (DOCUMENT_ENTRY, "SELECT * FROM orig WHERE EXISTS (SELECT 1 FROM kept) UNION ALL SELECT * FROM rel"),
            (ASSOCIATION, "SELECT * FROM kept"),
        ], sql.arg(limit))
    )
    return Statement(text, tuple(sql.args))


# --- the table ----------------------------------------------------------------------------------------

_DE_IDS = _by_id_or_unique_id("XDSDocumentEntry", multiple=True, logical=True)
_DE_IDS_NO_LID = _by_id_or_unique_id("XDSDocumentEntry", multiple=True)
_DE_ID = _by_id_or_unique_id("XDSDocumentEntry", multiple=False)
_FOL_IDS = _by_id_or_unique_id("XDSFolder", multiple=True, logical=True)
_FOL_ID = _by_id_or_unique_id("XDSFolder", multiple=False)
_SS_ID = _by_id_or_unique_id("XDSSubmissionSet", multiple=False)

_QUERIES = (
    StoredQuery("FindDocuments", FIND_DOCUMENTS, FIND_DOCUMENTS_PARAMS, _find_documents),
    StoredQuery("FindDocumentsByReferenceId", FIND_DOCUMENTS_BY_REFERENCE_ID, (
        *FIND_DOCUMENTS_PARAMS,
        ParamSpec("$XDSDocumentEntryReferenceIdList", S, required=True, multiple=True),
    ), _find_documents),
    StoredQuery("FindSubmissionSets", FIND_SUBMISSION_SETS, (
        ParamSpec("$XDSSubmissionSetPatientId", P, required=True),
        ParamSpec("$XDSSubmissionSetSourceId", S, multiple=True),
        ParamSpec("$XDSSubmissionSetSubmissionTimeFrom", T),
        ParamSpec("$XDSSubmissionSetSubmissionTimeTo", T),
        ParamSpec("$XDSSubmissionSetAuthorPerson", S),
        ParamSpec("$XDSSubmissionSetContentType", C, multiple=True),
        ParamSpec("$XDSSubmissionSetStatus", S, required=True, multiple=True, namespace=STATUS_TYPE),
        METADATA_LEVEL,
    ), _find_submission_sets),
    StoredQuery("FindFolders", FIND_FOLDERS, (
        ParamSpec("$XDSFolderPatientId", P, required=True),
        ParamSpec("$XDSFolderLastUpdateTimeFrom", T),
        ParamSpec("$XDSFolderLastUpdateTimeTo", T),
        ParamSpec("$XDSFolderCodeList", C, and_or=True),
        ParamSpec("$XDSFolderStatus", S, required=True, multiple=True, namespace=STATUS_TYPE),
        METADATA_LEVEL,
    ), _find_folders),
    StoredQuery("GetAll", GET_ALL, (
        ParamSpec("$patientId", P, required=True),
        ParamSpec("$XDSDocumentEntryStatus", S, required=True, multiple=True, namespace=STATUS_TYPE),
        ParamSpec("$XDSSubmissionSetStatus", S, required=True, multiple=True, namespace=STATUS_TYPE),
        ParamSpec("$XDSFolderStatus", S, required=True, multiple=True, namespace=STATUS_TYPE),
        DE_FORMAT,
        DE_CONFIDENTIALITY,
        DE_TYPE,
        METADATA_LEVEL,
    ), _get_all),
    StoredQuery("GetDocuments", GET_DOCUMENTS, (*_DE_IDS, HOME, METADATA_LEVEL), _get_documents,
                _alternatives(_DE_IDS)),
    StoredQuery("GetFolders", GET_FOLDERS, (*_FOL_IDS, HOME, METADATA_LEVEL), _get_folders,
                _alternatives(_FOL_IDS)),
    StoredQuery("GetAssociations", GET_ASSOCIATIONS, (
        ParamSpec("$uuid", U, required=True, multiple=True), HOME, METADATA_LEVEL,
    ), _get_associations),
    StoredQuery("GetDocumentsAndAssociations", GET_DOCUMENTS_AND_ASSOCIATIONS,
                (*_DE_IDS_NO_LID, HOME, METADATA_LEVEL), _get_documents_and_associations,
                _alternatives(_DE_IDS_NO_LID)),
    StoredQuery("GetSubmissionSets", GET_SUBMISSION_SETS, (
        ParamSpec("$uuid", U, required=True, multiple=True), HOME, METADATA_LEVEL,
    ), _get_submission_sets),
    StoredQuery("GetSubmissionSetAndContents", GET_SUBMISSION_SET_AND_CONTENTS, (
        *_SS_ID, DE_FORMAT, DE_CONFIDENTIALITY, DE_TYPE, HOME, METADATA_LEVEL,
    ), _get_submission_set_and_contents, _alternatives(_SS_ID)),
    StoredQuery("GetFolderAndContents", GET_FOLDER_AND_CONTENTS, (
        *_FOL_ID, DE_FORMAT, DE_CONFIDENTIALITY, DE_TYPE, HOME, METADATA_LEVEL,
    ), _get_folder_and_contents, _alternatives(_FOL_ID)),
    StoredQuery("GetFoldersForDocument", GET_FOLDERS_FOR_DOCUMENT, (*_DE_ID, HOME, METADATA_LEVEL),
                _get_folders_for_document, _alternatives(_DE_ID)),
    StoredQuery("GetRelatedDocuments", GET_RELATED_DOCUMENTS, (
        *_DE_ID,
        ParamSpec("$AssociationTypes", S, required=True, multiple=True),
        DE_TYPE, HOME, METADATA_LEVEL,
    ), _get_related_documents, _alternatives(_DE_ID)),
)

STORED_QUERIES: dict[str, StoredQuery] = {q.id: q for q in _QUERIES}
