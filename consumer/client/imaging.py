"""XDS-I.b Imaging Document Consumer: read a KOS manifest (what it references, where to fetch it),
build WADO-URI / WADO-RS links, and RAD-69 Retrieve Imaging Document Set.

The manifest names, per series, the Retrieve URL (the WADO-RS service root), the Retrieve Location
UID (the imaging source's repository unique id, used in RAD-69) and the AE title. The imaging
sources of this network serve RAD-69 at ``/rad69`` and WADO-URI at ``/wado`` beside ``/dicomweb``;
:func:`service_base` derives that base from the Retrieve URL.
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


class ManifestError(Exception):
    """Not a readable KOS manifest."""


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
class ImageRequest:
    study_uid: str
    series_uid: str
    location_uid: str  # the imaging source's repository unique id
    sop_instance_uid: str


@dataclass(slots=True)
class ImagingRetrieveResult:
    status: str
    errors: list[RegistryError]
    instances: dict[str, bytes]  # SOP instance UID -> the DICOM file


def rad69_request(documents: list[ImageRequest], syntaxes: list[str]) -> etree._Element:
    """A RetrieveImagingDocumentSetRequest (one StudyRequest/SeriesRequest per series)."""
    root = etree.Element(qn(XDSI, "RetrieveImagingDocumentSetRequest"), nsmap={"iherad": XDSI, "xdsb": XDSB})
    studies: dict[str, etree._Element] = {}
    series: dict[tuple[str, str], etree._Element] = {}
    for d in documents:
        st = studies.get(d.study_uid)
        if st is None:
            st = studies[d.study_uid] = etree.SubElement(root, qn(XDSI, "StudyRequest"), studyInstanceUID=d.study_uid)
        se = series.get((d.study_uid, d.series_uid))
        if se is None:
            se = series[(d.study_uid, d.series_uid)] = etree.SubElement(
                st, qn(XDSI, "SeriesRequest"), seriesInstanceUID=d.series_uid)
        doc = etree.SubElement(se, qn(XDSB, "DocumentRequest"))
        etree.SubElement(doc, qn(XDSB, "RepositoryUniqueId")).text = d.location_uid
        etree.SubElement(doc, qn(XDSB, "DocumentUniqueId")).text = d.sop_instance_uid
    tsl = etree.SubElement(root, qn(XDSI, "TransferSyntaxUIDList"))
    for ts in syntaxes:
        etree.SubElement(tsl, qn(XDSI, "TransferSyntaxUID")).text = ts
    return root


async def retrieve_imaging_document_set(client: SoapClient, url: str, documents: list[ImageRequest],
                                        syntaxes: list[str] | None = None) -> ImagingRetrieveResult:
    """RAD-69: the requested instances (MTOM); ``syntaxes`` default to the two every source supports."""
    if syntaxes is None:
        syntaxes = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    result = await client.call(url, ACTION_RAD69, rad69_request(documents, syntaxes), mtom=True)
    if result.body.tag != qn(XDSB, "RetrieveDocumentSetResponse"):
        raise ManifestError(f"RAD-69 answered {result.body.tag}, not a RetrieveDocumentSetResponse")
    status, errors = parse_registry_response(result.body.find(qn(RS, "RegistryResponse")))
    instances = {}
    for doc in result.body.findall(qn(XDSB, "DocumentResponse")):
        uid = doc.findtext(qn(XDSB, "DocumentUniqueId"))
        include = doc.find(f"{qn(XDSB, 'Document')}/{XOP_INCLUDE}")
        if include is not None:
            instances[uid] = lookup_attachment(result.attachments, include.get("href")).data
        else:
            instances[uid] = base64.b64decode(doc.findtext(qn(XDSB, "Document")) or "")
    return ImagingRetrieveResult(status, errors, instances)
