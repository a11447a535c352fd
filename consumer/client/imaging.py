"""XDS-I.b Imaging Document Consumer: read a KOS manifest (what it references, where to fetch it),
build WADO-URI / WADO-RS links, and RAD-69 Retrieve Imaging Document Set.

The manifest names, per series, the Retrieve URL (the WADO-RS service root), the Retrieve Location
UID (the imaging source's repository unique id, used in RAD-69) and the AE title. The imaging
sources of this network serve RAD-69 at ``/rad69`` and WADO-URI at ``/wado`` beside ``/dicomweb``;
:func:`service_base` derives that base from the Retrieve URL. :func:`rad69_request` and
:func:`read_rad69_response` are pure; :func:`retrieve_imaging_document_set` sends the request with
MTOM and returns the instances by SOP Instance UID with the status and errors, so a caller can tell
which instances were refused and why.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pydicom
from lxml import etree
from pydicom.errors import InvalidDicomError

from consumer.client.soap import SoapClient
from ihe.errors import RegistryError, parse_registry_response
from ihe.mtom import XOP_INCLUDE, lookup_attachment
from ihe.namespaces import ACTION_RAD69, RS, XDSB, XDSI, qn

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# What a consumer storing instances as they are can take: the usual compressed syntaxes first, so the
# source sends what it holds without transcoding, then the uncompressed ones every source can make.
PASS_THROUGH_SYNTAXES = [
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5", EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
]


class ManifestError(ValueError):
    """Not a readable KOS manifest, or an answer that is not the one asked for."""


@dataclass(frozen=True, slots=True)
class ManifestInstance:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(slots=True)
class ManifestSeries:
    series_uid: str
    retrieve_url: str | None
    location_uid: str | None
    ae_title: str | None
    instances: list[ManifestInstance] = field(default_factory=list)


@dataclass(slots=True)
class StudyManifest:
    study_uid: str
    patient_id: str
    series: list[ManifestSeries] = field(default_factory=list)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


def read_study_manifest(data: bytes) -> StudyManifest:
    """The study, series and instances a KOS manifest references, with where each series is."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise ManifestError(f"the manifest is not a DICOM file: {exc}") from None
    if str(ds.get("SOPClassUID", "")) != KOS_SOP_CLASS_UID:
        raise ManifestError(f"the manifest is not a Key Object Selection (SOP class {ds.get('SOPClassUID')})")
    studies = list(ds.get("CurrentRequestedProcedureEvidenceSequence") or [])
    if not studies:
        raise ManifestError("the manifest references no study")
    manifest = StudyManifest(str(studies[0].get("StudyInstanceUID", "")), str(ds.get("PatientID", "")))
    for study in studies:
        for item in study.get("ReferencedSeriesSequence") or []:
            series = ManifestSeries(str(item.get("SeriesInstanceUID", "")),
                                    str(item.RetrieveURL) if item.get("RetrieveURL") else None,
                                    str(item.RetrieveLocationUID) if item.get("RetrieveLocationUID") else None,
                                    str(item.RetrieveAETitle) if item.get("RetrieveAETitle") else None)
            series.instances = [ManifestInstance(str(s.ReferencedSOPClassUID), str(s.ReferencedSOPInstanceUID))
                                for s in item.get("ReferencedSOPSequence") or []]
            manifest.series.append(series)
    return manifest


def service_base(retrieve_url: str) -> str:
    """The imaging source's base URL from a Retrieve URL (``{base}/dicomweb[/studies/...]``)."""
    url = retrieve_url.rstrip("/")
    cut = url.find("/dicomweb")
    return url[:cut] if cut >= 0 else url


def wado_rs_link(retrieve_url: str, study: str, series: str, instance: str) -> str:
    """RAD-107 instance URL: the Retrieve URL is the WADO-RS root the consumer appends to."""
    root = retrieve_url.rstrip("/")
    cut = root.find("/studies/")
    root = root[:cut] if cut >= 0 else root
    return f"{root}/studies/{study}/series/{series}/instances/{instance}"


def wado_uri_link(retrieve_url: str, study: str, series: str, instance: str) -> str:
    """RAD-55 WADO-URI of the instance as DICOM."""
    query = urlencode({"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": instance,
                       "contentType": "application/dicom"})
    return f"{service_base(retrieve_url)}/wado?{query}"


def rad69_url(retrieve_url: str) -> str:
    return f"{service_base(retrieve_url)}/rad69"


# --- RAD-69 -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceRequest:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    repository_unique_id: str  # the imaging source's Retrieve Location UID
    home_community_id: str | None = None


@dataclass(slots=True)
class ImagingResult:
    status: str
    errors: list[RegistryError]
    instances: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> DICOM file bytes


def rad69_request(instances: list[InstanceRequest], transfer_syntaxes: list[str]) -> etree._Element:
    """iherad:RetrieveImagingDocumentSetRequest, one StudyRequest/SeriesRequest per study/series."""
    root = etree.Element(qn(XDSI, "RetrieveImagingDocumentSetRequest"), nsmap={"iherad": XDSI, "xdsb": XDSB})
    studies: dict[str, etree._Element] = {}
    series: dict[tuple[str, str], etree._Element] = {}
    for inst in instances:
        study = studies.get(inst.study_uid)
        if study is None:
            study = studies[inst.study_uid] = etree.SubElement(root, qn(XDSI, "StudyRequest"),
                                                               studyInstanceUID=inst.study_uid)
        key = (inst.study_uid, inst.series_uid)
        parent = series.get(key)
        if parent is None:
            parent = series[key] = etree.SubElement(study, qn(XDSI, "SeriesRequest"), seriesInstanceUID=inst.series_uid)
        doc = etree.SubElement(parent, qn(XDSB, "DocumentRequest"))
        if inst.home_community_id:
            etree.SubElement(doc, qn(XDSB, "HomeCommunityId")).text = inst.home_community_id
        etree.SubElement(doc, qn(XDSB, "RepositoryUniqueId")).text = inst.repository_unique_id
        etree.SubElement(doc, qn(XDSB, "DocumentUniqueId")).text = inst.sop_instance_uid
    syntaxes = etree.SubElement(root, qn(XDSI, "TransferSyntaxUIDList"))
    for uid in transfer_syntaxes:
        etree.SubElement(syntaxes, qn(XDSI, "TransferSyntaxUID")).text = uid
    return root


def read_rad69_response(body: etree._Element, attachments: dict) -> ImagingResult:
    """Status, errors and the instances of an xdsb:RetrieveDocumentSetResponse (MTOM attachments)."""
    if body.tag != qn(XDSB, "RetrieveDocumentSetResponse"):
        raise ManifestError(f"RAD-69 answered {body.tag}, not a RetrieveDocumentSetResponse")
    registry_response = body.find(qn(RS, "RegistryResponse"))
    if registry_response is None:
        raise ManifestError("the RAD-69 answer has no RegistryResponse")
    status, errors = parse_registry_response(registry_response)
    result = ImagingResult(status, errors)
    for doc in body.findall(qn(XDSB, "DocumentResponse")):
        uid = (doc.findtext(qn(XDSB, "DocumentUniqueId")) or "").strip()
        document = doc.find(qn(XDSB, "Document"))
        if not uid or document is None:
            continue
        include = document.find(XOP_INCLUDE)
        if include is not None:
            sink = lookup_attachment(attachments, include.get("href") or "")
            data = sink if isinstance(sink, bytes) else sink.data
        else:
            data = base64.b64decode(document.text or "")
        result.instances[uid] = data
    return result


async def retrieve_imaging_document_set(client: SoapClient, url: str, instances: list[InstanceRequest],
                                        transfer_syntaxes: list[str] | None = None) -> ImagingResult:
    """RAD-69 to the imaging source at ``url``; raises TransportError / SoapFaultError as the SOAP client does."""
    request = rad69_request(instances, PASS_THROUGH_SYNTAXES if transfer_syntaxes is None else transfer_syntaxes)
    answer = await client.call(url, ACTION_RAD69, request, mtom=True)
    return read_rad69_response(answer.body, answer.attachments)
