"""IHE error codes and the ebRS RegistryResponse / RegistryErrorList they travel in.

Validators raise :class:`XDSError` holding one or more :class:`RegistryError`; the
transaction handlers turn them into a RegistryResponse (or, for stored queries, an
AdhocQueryResponse) with the right status. Nothing here knows about HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from lxml import etree

from ihe.namespaces import RS, qn


class ErrorCode(StrEnum):
    """Error codes of ITI TF-3 Table 4.2.4.1-2 used by our actors."""

    REGISTRY_ERROR = "XDSRegistryError"
    REGISTRY_METADATA_ERROR = "XDSRegistryMetadataError"
    REGISTRY_BUSY = "XDSRegistryBusy"
    REGISTRY_OUT_OF_RESOURCES = "XDSRegistryOutOfResources"
    REGISTRY_NOT_AVAILABLE = "XDSRegistryNotAvailable"
    UNKNOWN_PATIENT_ID = "XDSUnknownPatientId"
    PATIENT_ID_DOES_NOT_MATCH = "XDSPatientIdDoesNotMatch"
    NON_IDENTICAL_HASH = "XDSNonIdenticalHash"
    NON_IDENTICAL_SIZE = "XDSNonIdenticalSize"
    DUPLICATE_UNIQUE_ID_IN_REGISTRY = "XDSDuplicateUniqueIdInRegistry"
    EXTRA_METADATA_NOT_SAVED = "XDSExtraMetadataNotSaved"
    REPLACE_FAILED = "XDSReplaceFailed"
    REGISTRY_DEPRECATED_DOCUMENT = "XDSRegistryDeprecatedDocumentError"
    STORED_QUERY_PARAM_NUMBER = "XDSStoredQueryParamNumber"
    STORED_QUERY_MISSING_PARAM = "XDSStoredQueryMissingParam"
    UNKNOWN_STORED_QUERY = "XDSUnknownStoredQuery"
    RESULT_NOT_SINGLE_PATIENT = "XDSResultNotSinglePatient"
    TOO_MANY_RESULTS = "XDSTooManyResults"
    REPOSITORY_ERROR = "XDSRepositoryError"
    REPOSITORY_METADATA_ERROR = "XDSRepositoryMetadataError"
    REPOSITORY_BUSY = "XDSRepositoryBusy"
    REPOSITORY_OUT_OF_RESOURCES = "XDSRepositoryOutOfResources"
    REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE = "XDSRepositoryDuplicateUniqueIdInMessage"
    MISSING_DOCUMENT = "XDSMissingDocument"
    MISSING_DOCUMENT_METADATA = "XDSMissingDocumentMetadata"
    DOCUMENT_UNIQUE_ID_ERROR = "XDSDocumentUniqueIdError"
    UNKNOWN_REPOSITORY_ID = "XDSUnknownRepositoryId"
    UNKNOWN_COMMUNITY = "XDSUnknownCommunity"
    UNAVAILABLE_COMMUNITY = "XDSUnavailableCommunity"
    # XDS Metadata Update option, ITI-57 (ITI TF-2b 3.57.4.1.3.4)
    METADATA_UPDATE_ERROR = "XDSMetadataUpdateError"
    METADATA_UPDATE_OPERATION_ERROR = "XDSMetadataUpdateOperationError"
    METADATA_VERSION_ERROR = "XDSMetadataVersionError"
    PATIENT_ID_RECONCILIATION_ERROR = "XDSPatientIDReconciliationError"
    # ITI-62 (ebRS 3.0 exception names, ITI TF-3 Table 4.2.4.1-2)
    UNRESOLVED_REFERENCE = "UnresolvedReferenceException"
    REFERENCES_EXIST = "ReferencesExistException"


SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
SEVERITY_WARNING = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Warning"

STATUS_SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
STATUS_FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
STATUS_PARTIAL_SUCCESS = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"


@dataclass(frozen=True, slots=True)
class RegistryError:
    """One entry of a RegistryErrorList.

    ``context`` is the human-readable codeContext: it names the object (by id or
    uniqueId) and the attribute at fault, so an integration engineer can find it.
    """

    code: str
    context: str
    location: str | None = None
    severity: str = SEVERITY_ERROR

    @property
    def is_error(self) -> bool:
        return self.severity == SEVERITY_ERROR


class XDSError(Exception):
    """A transaction failed with one or more IHE errors (and possibly warnings)."""

    def __init__(self, errors: RegistryError | Iterable[RegistryError]) -> None:
        self.errors: list[RegistryError] = [errors] if isinstance(errors, RegistryError) else list(errors)
        super().__init__("; ".join(f"{e.code}: {e.context}" for e in self.errors))

    @classmethod
    def of(cls, code: str, context: str, location: str | None = None) -> XDSError:
        return cls(RegistryError(code, context, location))


def error(code: str, context: str, location: str | None = None) -> RegistryError:
    return RegistryError(code, context, location)


def warning(code: str, context: str, location: str | None = None) -> RegistryError:
    return RegistryError(code, context, location, SEVERITY_WARNING)


def response_status(errors: Iterable[RegistryError], partial: bool = False) -> str:
    """Failure if any error, PartialSuccess if asked for and some errors, else Success."""
    errs = [e for e in errors if e.is_error]
    if not errs:
        return STATUS_SUCCESS
    return STATUS_PARTIAL_SUCCESS if partial else STATUS_FAILURE


def build_error_list(errors: Iterable[RegistryError]) -> etree._Element | None:
    """``rs:RegistryErrorList`` for ``errors`` or None when there are none."""
    errors = list(errors)
    if not errors:
        return None
    highest = SEVERITY_ERROR if any(e.is_error for e in errors) else SEVERITY_WARNING
    error_list = etree.Element(qn(RS, "RegistryErrorList"), nsmap={"rs": RS}, highestSeverity=highest)
    for e in errors:
        attrs = {"errorCode": e.code, "codeContext": e.context, "severity": e.severity}
        if e.location:
            attrs["location"] = e.location
        etree.SubElement(error_list, qn(RS, "RegistryError"), attrs)
    return error_list


def build_registry_response(
    errors: Iterable[RegistryError] = (), *, status: str | None = None
) -> etree._Element:
    """``rs:RegistryResponse`` carrying ``errors``; status derived unless given."""
    errors = list(errors)
    response = etree.Element(
        qn(RS, "RegistryResponse"), nsmap={"rs": RS}, status=status or response_status(errors)
    )
    error_list = build_error_list(errors)
    if error_list is not None:
        response.append(error_list)
    return response


def parse_registry_response(element: etree._Element) -> tuple[str, list[RegistryError]]:
    """Read status and errors back out of an ``rs:RegistryResponse`` (used by clients)."""
    status = element.get("status", "")
    errors = [
        RegistryError(
            code=e.get("errorCode", ""),
            context=e.get("codeContext", ""),
            location=e.get("location"),
            severity=e.get("severity", SEVERITY_ERROR),
        )
        for e in element.iter(qn(RS, "RegistryError"))
    ]
    return status, errors
