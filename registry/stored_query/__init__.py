"""ITI-18 Registry Stored Query: the handler.

Parse the AdhocQueryRequest, check the parameters against the query's table, run its one SQL
statement, and answer with the stored fragments (LeafClass) or ObjectRefs. Every failure is an
AdhocQueryResponse with status Failure and the IHE error code; only a body that is not an
AdhocQueryRequest at all gets a SOAP Fault.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ihe.audit.messages import patient
from ihe.audit.middleware import add_participant_object
from ihe.errors import ErrorCode, RegistryError, XDSError, error
from ihe.http import SoapReply
from ihe.metadata.model import Identifiable
from ihe.namespaces import ACTION_ITI18_RESPONSE
from ihe.soap import SoapRequest
from registry.stored_query.params import Parameters, parse_parameters
from registry.stored_query.queries import STORED_QUERIES, StoredQuery
from registry.stored_query.request import QueryRequest, ReturnType, parse_adhoc_query_request
from registry.stored_query.response import adhoc_query_response
from registry.stored_query.sql import ResultObject, Sql, fetch_objects

if TYPE_CHECKING:
    from registry.app import Registry

__all__ = ["STORED_QUERIES", "registry_stored_query"]

log = logging.getLogger(__name__)


async def registry_stored_query(registry: Registry, request: SoapRequest) -> SoapReply:
    """The ITI-18 handler (``SoapService`` action ``urn:ihe:iti:2007:RegistryStoredQuery``)."""
    query = parse_adhoc_query_request_or_errors(request)
    if isinstance(query, bytes):
        return SoapReply(ACTION_ITI18_RESPONSE, query)
    leaf_class = query.return_type is ReturnType.LEAF_CLASS
    warnings: list[RegistryError] = []
    try:
        stored = lookup(query.query_id)
        params = parse_parameters(stored.params, stored.alternatives, query.slots)
        warnings = params.warnings
        home = home_community(registry.settings.home_community_id, query.home, params)
        objects = await matching_objects(registry, request, stored, params, leaf_class)
    except XDSError as exc:
        body = adhoc_query_response(errors=[*warnings, *exc.errors])
        return SoapReply(ACTION_ITI18_RESPONSE, body)
    except Exception:  # ours, not the consumer's: log it, answer XDSRegistryError without details
        log.exception("stored query %s failed", query.query_id)
        body = adhoc_query_response(errors=[error(ErrorCode.REGISTRY_ERROR,
                                                  "internal error in the registry while running the stored query; "
                                                  "see the registry's log")])
        return SoapReply(ACTION_ITI18_RESPONSE, body)
    log.debug("stored query %s returned %d objects", stored.name, len(objects))
    # The audit record names the patients whose objects were returned, also when the query named none
    # (GetDocuments by uniqueId, GetAssociations ...): "who saw which patient" must find them.
    for patient_id in dict.fromkeys(o.patient_id for o in objects if o.patient_id):
        add_participant_object(patient(patient_id))
    return SoapReply(ACTION_ITI18_RESPONSE,
                     adhoc_query_response(objects, leaf_class=leaf_class, home=home, errors=warnings))


# With the access policy on, how many times the registry's limit a query may read to find what the requester may
# see (the rows withheld from it do not count).
POLICY_READ_FACTORS = (1, 2, 4, 8)


async def matching_objects(registry: Registry, request: SoapRequest, stored: StoredQuery, params: Parameters,
                           leaf_class: bool) -> list[ResultObject]:
    """The query's objects that the requester may see, checked against the registry's limit and for a single
    patient after the access policy's filter: what is withheld from the requester neither counts towards
    XDSTooManyResults nor makes the answer "not single patient" (either would tell that it exists)."""
    limit = registry.settings.max_query_results
    for factor in POLICY_READ_FACTORS:
        read = factor * limit + 1
        objects = await fetch_objects(registry.pool, stored.build(params, Sql(leaf_class), read))
        if registry.policy is None:
            break
        exhausted = len(objects) < read
        objects = await permitted(registry, request, objects)
        if exhausted or len(objects) > limit:
            break
    else:
        raise XDSError.of(ErrorCode.TOO_MANY_RESULTS,
                          f"the query matches more than {read - 1} objects, too many to apply the access policy to "
                          f"(the registry's limit is {limit}); narrow it with more parameters")
    check_result(objects, limit, leaf_class)
    return objects


async def permitted(registry: Registry, request: SoapRequest, objects: list[ResultObject]) -> list[ResultObject]:
    from ihe.policy.requester import requester_of_soap
    from registry.access_policy import filter_objects

    requester = requester_of_soap(request)
    kept, denied = await filter_objects(registry.pool, registry.policy, requester, objects)
    if denied:
        log.info("access policy: %d of %d objects withheld from %s (%s)", len(denied), len(objects),
                 requester.organisation or requester.certificate or requester.node,
                 "; ".join(sorted({d.reason for d in denied})))
    return kept


def parse_adhoc_query_request_or_errors(request: SoapRequest) -> QueryRequest | bytes:
    """The parsed request, or the Failure response body when it is malformed (SoapFault passes through)."""
    try:
        return parse_adhoc_query_request(request.body)
    except XDSError as exc:
        return adhoc_query_response(errors=exc.errors)


def lookup(query_id: str) -> StoredQuery:
    stored = STORED_QUERIES.get(query_id.strip().lower())
    if stored is None:
        raise XDSError.of(ErrorCode.UNKNOWN_STORED_QUERY,
                          f"stored query {query_id} is not known to this registry (ITI TF-2a 3.18.4.1.2.3.7)")
    return stored


def home_community(ours: str | None, home_attribute: str | None, params: Parameters) -> str | None:
    """The homeCommunityId to put on ObjectRefs: ours when configured, else the one the query named.

    A query aimed at another community (home attribute or $homeCommunityId) is refused with
    XDSUnknownCommunity rather than answered with this community's documents.
    """
    asked = {h for h in (home_attribute, params.get("$homeCommunityId")) if h}
    if ours:
        others = asked - {ours}
        if others:
            raise XDSError.of(ErrorCode.UNKNOWN_COMMUNITY,
                              f"homeCommunityId {', '.join(sorted(others))} is not this registry's community {ours}")
        return ours
    if len(asked) > 1:
        raise XDSError.of(ErrorCode.REGISTRY_ERROR,
                          f"the home attribute and $homeCommunityId differ: {', '.join(sorted(asked))}")
    return next(iter(asked), None)


def check_result(objects: list[ResultObject], max_results: int, leaf_class: bool = True) -> None:
    """XDSTooManyResults beyond the configured limit; XDSResultNotSinglePatient for a mixed LeafClass answer.

    Only full metadata discloses whose documents they are: ObjectRefs of several patients (a
    consumer's GetDocuments by ids it already holds) are answered (ITI TF-2a 3.18.4.1.3).
    """
    if len(objects) > max_results:
        raise XDSError.of(ErrorCode.TOO_MANY_RESULTS,
                          f"the query matches more than {max_results} objects (the registry's limit); "
                          "narrow it with more parameters")
    if not leaf_class:
        return
    patients = {o.patient_id for o in objects if o.patient_id is not None}
    # One patient may be stored with and without the CX namespace id: compare id and authority.
    if len(patients) > 1 and len({_patient_key(p) for p in patients}) > 1:
        raise XDSError.of(ErrorCode.RESULT_NOT_SINGLE_PATIENT,
                          "the query's result holds objects of different patients; "
                          "ask for the objects of one patient at a time")


def _patient_key(cx: str) -> tuple[str, str | None]:
    ident = Identifiable.parse_cx(cx)
    return ident.id, ident.authority_oid or ident.authority_namespace
