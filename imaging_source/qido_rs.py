"""QIDO-RS (PS3.18 10.6): Search for Studies, Series and Instances, answered from the index.

Answers are DICOM JSON (PS3.18 F.2), or PS3.19 XML parts of a multipart/related when asked.
Matching follows PS3.4 C.2.2.2 as PS3.18 8.3.4 / 10.6.1.2 ask: single value, UID list
(comma-separated or the key repeated), wildcard ``*`` / ``?``,
date / time / datetime ranges (a date and its time given together are matched as one combined
datetime), sequence matching with dotted paths, Person Names case-insensitively; empty value =
universal matching (the attribute is returned). Keys of higher levels may be given at lower levels
(relational). ``fuzzymatching=true`` is answered with literal matching and the Warning header PS3.18
8.3.4.2 prescribes; ``emptyvaluematching=true`` is supported; ``multiplevaluematching`` is not (warned),
except that ModalitiesInStudy takes alternatives (``CT,MR`` or ``CT\\MR``), as viewers send it.
No match is 204 (PS3.18 10.6.3.1); a response holds at most MAX_RESULTS matches, with a Warning when more remain.

The index (imaging_source.store tables) holds every study-level attribute (the header kept at
ingest) and the series/instance attributes it is searched by most; what it lacks (e.g. Rows,
Performed Procedure Step Start Date) is read from the stored files, and only for the page being
returned unless a match key needs it. Only what the index holds now is answered: instances taken out
(IOCM rejection) and series/studies left without instances are not found.

Parsing (:func:`parse_query`) and matching (:func:`match`) are pure; the handlers do the I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import pydicom
from aiohttp import web
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from imaging_source.context import ImagingSource
from imaging_source.storage import StorageError, is_uid
from imaging_source.wado_rs import DICOM_JSON, PREFIX, parse_accept

log = logging.getLogger(__name__)

JsonDataset = dict[str, dict[str, Any]]


class Level(Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class QueryError(ValueError):
    """A query the origin server cannot take: answered 400 with ``reason``."""


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def _tags(*keywords: str) -> tuple[str, ...]:
    return tuple(tag_key(tag_for_keyword(k)) for k in keywords)


# PS3.18 Tables 10.6.3-3, -4 and -5: what every match includes by default.
STUDY_DEFAULTS = _tags(
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = _tags(
    "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
    "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "RequestAttributesSequence",
)
INSTANCE_DEFAULTS = _tags(
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
    "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)
# The unique keys of the levels above are always given, so that a result can be retrieved.
STUDY_UID, SERIES_UID, SOP_UID = _tags("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

# Series-level attributes read from a series' first instance (General Series and related modules).
SERIES_FILE_KEYWORDS = (
    "SpecificCharacterSet", "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "SeriesDate",
    "SeriesTime", "Laterality", "BodyPartExamined", "ProtocolName", "OperatorsName", "PerformingPhysicianName",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "RequestAttributesSequence", "PatientPosition", "FrameOfReferenceUID",
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "InstitutionalDepartmentName", "StationName",
    "TimezoneOffsetFromUTC", "AnatomicRegionSequence",
)
SERIES_FILE_TAGS = frozenset(_tags(*SERIES_FILE_KEYWORDS))

# Tags the index answers at each level (besides the study header): a key on anything else needs the files.
STUDY_COMPUTED = frozenset(_tags("ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
                                 "NumberOfStudyRelatedInstances", "RetrieveURL", "InstanceAvailability"))
SERIES_INDEXED = frozenset(_tags("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
                                 "BodyPartExamined", "NumberOfSeriesRelatedInstances", "RetrieveURL"))
INSTANCE_INDEXED = frozenset(_tags("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "NumberOfFrames",
                                   "RetrieveURL", "InstanceAvailability", "AvailableTransferSyntaxUID"))
# Study header attributes that belong to lower levels (the header is copied from the first instance).
NOT_STUDY_LEVEL = frozenset(_tags("Modality"))

# At most this many matches per response (PS3.18 lets the origin server cap them): the rest by offset.
MAX_RESULTS = 5000
MORE_RESULTS_WARNING = "There are additional results that can be requested."
FUZZY_WARNING = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
MULTIPLE_WARNING = ("The multiplevaluematching parameter is not supported. "
                    "Multiple Value Matching has not been performed.")

STRING_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
DATE_TIME_VRS = frozenset({"DA", "TM", "DT"})
# (date, time) pairs matched as one datetime when both are given (PS3.4 C.2.2.2.5.1).
DATE_TIME_PAIRS = tuple((tag_for_keyword(d), tag_for_keyword(t)) for d, t in (
    ("StudyDate", "StudyTime"), ("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime"),
    ("ContentDate", "ContentTime"), ("InstanceCreationDate", "InstanceCreationTime"),
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
    ("PatientBirthDate", "PatientBirthTime"),
))
MODALITIES_IN_STUDY = _tags("ModalitiesInStudy")[0]


# --- attributes -----------------------------------------------------------------------------------


def parse_attribute(text: str) -> tuple[int, ...]:
    """A keyword or 8-hex-digit tag, dotted for sequence paths (PS3.18 8.3.4.1), as a tuple of tags."""
    path = []
    for part in text.split("."):
        part = part.strip()
        if re.fullmatch(r"[0-9A-Fa-f]{8}", part):
            tag = int(part, 16)
        else:
            tag = tag_for_keyword(part) if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", part) else None
            if tag is None:
                raise QueryError(f"{part!r} is neither a DICOM keyword nor a tag (8 hexadecimal digits)")
        if (tag >> 16) % 2 == 1:
            raise QueryError(f"private attribute {tag_key(tag)} cannot be searched here")
        try:
            vr = vr_of(tag)
        except KeyError:
            raise QueryError(f"attribute {tag_key(tag)} is not in the DICOM data dictionary") from None
        path.append(tag)
        if len(path) < len(text.split(".")) and vr != "SQ":
            raise QueryError(f"{text!r}: {keyword_for_tag(tag) or tag_key(tag)} is not a sequence")
    return tuple(path)


def vr_of(tag: int) -> str:
    vr = dictionary_VR(tag)
    return vr.split(" or ")[0]


# --- matching -------------------------------------------------------------------------------------


def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _time_bounds(value: str, upper: bool) -> float:
    """Seconds into the day of a TM value; a reduced-precision upper bound covers its whole last unit."""
    m = re.fullmatch(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?", value.strip())
    if not m:
        raise ValueError(value)
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        raise ValueError(value)
    seconds = int(hh) * 3600 + int(mm or 0) * 60 + int(ss or 0) + float(f"0.{frac}" if frac else 0)
    if upper:
        unit = 3600 if mm is None else 60 if ss is None else 1 if frac is None else 10 ** -len(frac)
        seconds += unit - 1e-6
    return seconds


def _date(value: str) -> datetime:
    value = value.strip()
    if not re.fullmatch(r"\d{8}", value):
        raise ValueError(value)
    return datetime.strptime(value, "%Y%m%d")


def _datetime(value: str, upper: bool) -> datetime:
    """A DT (offset ignored); reduced precision: the start, or for an upper bound the end, of what it names."""
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:[+-]\d{4})?", value.strip())
    if not m:
        raise ValueError(value)
    year, month, day, hh, mm, ss, frac = m.groups()
    start = datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0), int(ss or 0),
                     int((frac or "0").ljust(6, "0")))
    if not upper:
        return start
    if month is None:
        end = start.replace(year=start.year + 1)
    elif day is None:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    elif hh is None:
        end = start + timedelta(days=1)
    elif mm is None:
        end = start + timedelta(hours=1)
    elif ss is None:
        end = start + timedelta(minutes=1)
    elif frac is None:
        end = start + timedelta(seconds=1)
    else:
        end = start + timedelta(microseconds=10 ** (6 - len(frac)))
    return end - timedelta(microseconds=1)


def _range(value: str) -> tuple[str | None, str | None, bool]:
    """(low, high, is_range) of a range-capable value: "a-b", "-b", "a-" or a single "a"."""
    if "-" not in value:
        return value, value, False
    low, _, high = value.partition("-")
    return low.strip() or None, high.strip() or None, True


Test = Callable[[str], bool]


def _range_test(value: str, what: str, parse: Callable[[str, bool], Any], form: str, noun: str) -> Test:
    """A DA/TM/DT match: ``value`` is one value or a range (either end open); ``parse(text, upper)`` gives
    a comparable bound (``upper`` widens a partial value to the end of its span). A stored value that
    does not parse does not match."""
    low, high, _ = _range(value)
    try:
        lo = parse(low, False) if low else None
        hi = parse(high, True) if high else None
    except ValueError:
        raise QueryError(f"{what}: {value!r} is not {form} or a {noun} range") from None

    def test(v: str) -> bool:
        try:
            stored = parse(v, False)
        except ValueError:
            return False
        return (lo is None or stored >= lo) and (hi is None or stored <= hi)
    return test


def value_test(vr: str, value: str, keyword: str) -> Test:
    """The test one stored value must pass to match the query ``value`` of an attribute of ``vr``."""
    what = keyword
    if vr == "UI":
        uids = [u.strip() for u in re.split(r"[,\\]", value)]
        if not all(is_uid(u) for u in uids):
            raise QueryError(f"{what}: {value!r} is not a UID or a comma-separated list of UIDs")
        wanted = frozenset(uids)
        return lambda v: v.strip() in wanted
    if vr == "DA":
        return _range_test(value, what, lambda v, _upper: _date(v), "a date (YYYYMMDD)", "date")
    if vr == "TM":
        return _range_test(value, what, _time_bounds, "a time (HHMMSS.FFFFFF)", "time")
    if vr == "DT":
        return _range_test(value, what, _datetime, "a datetime (YYYYMMDDHHMMSS)", "datetime")
    if vr in NUMBER_VRS:
        try:
            number = float(value)
        except ValueError:
            raise QueryError(f"{what}: {value!r} is not a number") from None

        def test_number(v: str) -> bool:
            try:
                return float(v) == number
            except ValueError:
                return False
        return test_number
    if vr in STRING_VRS:
        ignore_case = vr == "PN"
        if vr in WILDCARD_VRS and ("*" in value or "?" in value):
            pattern = _wildcard(value, ignore_case)
            return lambda v: pattern.fullmatch(v.rstrip(" ")) is not None
        wanted = value.strip().casefold() if ignore_case else value.strip()
        if ignore_case:
            return lambda v: v.strip().casefold() == wanted
        return lambda v: v.strip() == wanted
    raise QueryError(f"{what}: attributes of VR {vr} cannot be matched")


def _strings(element: Mapping[str, Any] | None) -> list[str]:
    """The values of one DICOM JSON element as strings (every component group of a PN)."""
    if not element:
        return []
    out = []
    for v in element.get("Value") or []:
        if isinstance(v, dict):
            out.extend(str(g) for g in v.values() if g)
        elif v is not None:
            out.append(str(v))
    return out


def _elements(dataset: Mapping[str, Any], path: tuple[int, ...]) -> list[Mapping[str, Any]]:
    """The element at ``path`` in every item along the way (sequence matching: any item may match)."""
    found: list[Mapping[str, Any]] = []
    element = dataset.get(tag_key(path[0]))
    if element is None:
        return found
    if len(path) == 1:
        return [element]
    for item in element.get("Value") or []:
        if isinstance(item, dict):
            found.extend(_elements(item, path[1:]))
    return found


@dataclass(frozen=True, slots=True)
class MatchKey:
    """One attribute with a (non-universal) value to match."""

    path: tuple[int, ...]
    test: Test

    def matches(self, dataset: Mapping[str, Any], empty_matches: bool) -> bool:
        values = [v for e in _elements(dataset, self.path) for v in _strings(e)]
        if not values:
            return empty_matches
        return any(self.test(v) for v in values)


@dataclass(frozen=True, slots=True)
class DateTimeKey:
    """A date and its time given together: one combined datetime range (PS3.4 C.2.2.2.5.1)."""

    date_tag: int
    time_tag: int
    low: datetime | None
    high: datetime | None

    @property
    def path(self) -> tuple[int, ...]:
        return (self.date_tag,)

    def matches(self, dataset: Mapping[str, Any], empty_matches: bool) -> bool:
        dates = _strings(dataset.get(tag_key(self.date_tag)))
        if not dates:
            return empty_matches
        times = _strings(dataset.get(tag_key(self.time_tag)))
        try:
            day = _date(dates[0])
        except ValueError:
            return False
        if not times:  # no time: the day must fall in the range
            return ((self.low is None or day + timedelta(days=1) > self.low)
                    and (self.high is None or day <= self.high))
        try:
            moment = day + timedelta(seconds=_time_bounds(times[0], False))
        except ValueError:
            return False
        return (self.low is None or moment >= self.low) and (self.high is None or moment <= self.high)


def combined_key(date_tag: int, date_value: str, time_tag: int, time_value: str) -> DateTimeKey:
    dlow, dhigh, _ = _range(date_value)
    tlow, thigh, _ = _range(time_value)
    try:
        low = _date(dlow) + timedelta(seconds=_time_bounds(tlow, False) if tlow else 0) if dlow else None
        high = (_date(dhigh) + timedelta(seconds=_time_bounds(thigh, True) if thigh else 86400 - 1e-6)
                if dhigh else None)
    except ValueError:
        raise QueryError(f"{keyword_for_tag(date_tag)}={date_value!r} with {keyword_for_tag(time_tag)}="
                         f"{time_value!r} is not a date/time (range)") from None
    return DateTimeKey(date_tag, time_tag, low, high)


@dataclass(slots=True)
class Query:
    level: Level
    keys: list[MatchKey | DateTimeKey] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)  # top-level tags asked for (includefield, universal keys)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    empty_value_matching: bool = False
    warnings: list[str] = field(default_factory=list)

    def key_tags(self) -> set[str]:
        return {tag_key(k.path[0]) for k in self.keys} | (
            {tag_key(k.time_tag) for k in self.keys if isinstance(k, DateTimeKey)})


_CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching", "emptyvaluematching",
                      "multiplevaluematching"})


def _uint(name: str, value: str) -> int:
    if not re.fullmatch(r"\d{1,9}", value.strip()):
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _bool(name: str, value: str) -> bool:
    if value.strip().lower() not in ("true", "false"):
        raise QueryError(f"{name} must be true or false, not {value!r}")
    return value.strip().lower() == "true"


def parse_query(level: Level, params: Iterable[tuple[str, str]]) -> Query:
    """The query of a QIDO-RS request's parameters, or QueryError saying which parameter is wrong."""
    query = Query(level)
    values: dict[tuple[int, ...], list[str]] = {}
    names: dict[tuple[int, ...], str] = {}
    for name, value in params:
        lower = name.lower()
        if lower in _CONTROL:
            if lower == "includefield":
                for item in value.split(","):
                    item = item.strip()
                    if item.lower() == "all":
                        query.include_all = True
                    elif item:
                        query.returned.append(parse_attribute(item)[0])
            elif lower == "limit":
                query.limit = _uint("limit", value)
            elif lower == "offset":
                query.offset = _uint("offset", value)
            elif lower == "fuzzymatching":
                if _bool(name, value):
                    query.warnings.append(FUZZY_WARNING)
            elif lower == "emptyvaluematching":
                query.empty_value_matching = _bool(name, value)
            elif lower == "multiplevaluematching" and _bool(name, value):
                query.warnings.append(MULTIPLE_WARNING)
            continue
        path = parse_attribute(name)
        if path in values and vr_of(path[-1]) != "UI":
            raise QueryError(f"{name} is given more than once; only UID attributes take a list")
        values.setdefault(path, []).append(value)
        names[path] = name
    pending: dict[tuple[int, ...], str] = {}
    for path, given in values.items():
        value = ",".join(v for v in given if v.strip()) if len(given) > 1 else given[0]
        query.returned.append(path[0])
        if value.strip() in ("", "*"):
            continue  # universal matching: returned, not matched
        pending[path] = value
    for date_tag, time_tag in DATE_TIME_PAIRS:
        if (date_tag,) in pending and (time_tag,) in pending:
            query.keys.append(combined_key(date_tag, pending.pop((date_tag,)), time_tag, pending.pop((time_tag,))))
    for path, value in pending.items():
        vr = vr_of(path[-1])
        if vr == "SQ":
            raise QueryError(f"{names[path]} is a sequence: match one of its attributes ({names[path]}.Keyword)")
        if path == (tag_for_keyword("ModalitiesInStudy"),):
            alternatives = [value_test("CS", v, names[path]) for v in re.split(r"[,\\]", value) if v.strip()]
            query.keys.append(MatchKey(path, lambda v, tests=alternatives: any(t(v) for t in tests)))
            continue
        query.keys.append(MatchKey(path, value_test(vr, value, names[path])))
    return query


def match(query: Query, dataset: Mapping[str, Any]) -> bool:
    return all(key.matches(dataset, query.empty_value_matching) for key in query.keys)


def project(dataset: JsonDataset, query: Query, defaults: Iterable[str]) -> JsonDataset:
    """The attributes of a match that are returned: defaults, includefield and match keys (empty if unknown)."""
    if query.include_all:
        wanted = set(dataset) | set(defaults)
    else:
        wanted = set(defaults) | {tag_key(t) for t in query.returned} | query.key_tags()
    out: JsonDataset = {}
    for key in sorted(wanted):
        element = dataset.get(key)
        if element is None:
            if key == "00080005":
                continue  # no extended character set: nothing to say
            element = {"vr": vr_of(int(key, 16))}
        out[key] = element
    return out


# --- entities from the index ------------------------------------------------------------------------


def _element(vr: str, *values: Any) -> dict[str, Any]:
    values = tuple(v for v in values if v is not None and v != "")
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def study_dataset(row: Mapping[str, Any], base: str) -> JsonDataset:
    header = row["header"]
    if isinstance(header, str):
        header = json.loads(header)
    ds: JsonDataset = {k: v for k, v in header.items() if k not in NOT_STUDY_LEVEL}
    uid = row["study_uid"]
    ds[STUDY_UID] = _element("UI", uid)
    ds["00080061"] = _element("CS", *sorted(m for m in row["modalities"] or [] if m))
    ds["00080062"] = _element("UI", *sorted(row["sop_classes"]))
    ds["00201206"] = _element("IS", row["series_count"])
    ds["00201208"] = _element("IS", row["instance_count"])
    ds["00081190"] = _element("UR", f"{base}/studies/{uid}")
    ds["00080056"] = _element("CS", "ONLINE")
    return ds


def series_dataset(row: Mapping[str, Any], base: str) -> JsonDataset:
    ds: JsonDataset = {
        SERIES_UID: _element("UI", row["series_uid"]),
        "00080060": _element("CS", row["modality"]),
        "00200011": _element("IS", row["series_number"]),
        "0008103E": _element("LO", row["series_description"]),
        "00180015": _element("CS", row["body_part"]),
        "00201209": _element("IS", row["instance_count"]),
        "00081190": _element("UR", f"{base}/studies/{row['study_uid']}/series/{row['series_uid']}"),
    }
    return ds


def instance_dataset(row: Mapping[str, Any], base: str) -> JsonDataset:
    return {
        SOP_UID: _element("UI", row["sop_instance_uid"]),
        "00080016": _element("UI", row["sop_class_uid"]),
        "00200013": _element("IS", row["instance_number"]),
        "00280008": _element("IS", row["number_of_frames"]),
        "00083002": _element("UI", row["transfer_syntax_uid"]),
        "00080056": _element("CS", "ONLINE"),
        "00081190": _element("UR", f"{base}/studies/{row['study_uid']}/series/{row['series_uid']}/instances/"
                                   f"{row['sop_instance_uid']}"),
    }


# Studies in two steps: the candidates (with instances: a study IOCM emptied is not found) in answer order, then
# the counts of only those that are returned, unless a key needs the counts to match.
_STUDY_SQL = """
SELECT s.study_uid, s.header FROM imaging_study s
WHERE EXISTS (SELECT 1 FROM imaging_instance i WHERE i.study_uid = s.study_uid)
  AND ($1::text[] IS NULL OR s.study_uid = ANY($1)) AND ($2::text IS NULL OR s.patient_id = $2)
  AND ($3::text IS NULL OR s.accession_number = $3)
ORDER BY s.header->'00080020'->'Value'->>0 DESC NULLS LAST, s.header->'00080030'->'Value'->>0 DESC NULLS LAST,
         s.study_uid
LIMIT $4 OFFSET $5
"""

_STUDY_COUNTS_SQL = """
SELECT i.study_uid, count(DISTINCT i.series_uid) AS series_count, count(*) AS instance_count,
       array_agg(DISTINCT se.modality) FILTER (WHERE se.modality IS NOT NULL) AS modalities,
       array_agg(DISTINCT i.sop_class_uid) AS sop_classes
FROM imaging_instance i JOIN imaging_series se ON se.series_uid = i.series_uid
WHERE i.study_uid = ANY($1::text[])
GROUP BY i.study_uid
"""

_SERIES_SQL = """
SELECT se.series_uid, se.study_uid, se.modality, se.series_number, se.series_description, se.body_part,
       count(*) AS instance_count,
       (array_agg(i.storage_key ORDER BY i.instance_number NULLS LAST, i.sop_instance_uid))[1] AS first_key
FROM imaging_series se JOIN imaging_instance i ON i.series_uid = se.series_uid
WHERE ($1::text[] IS NULL OR se.study_uid = ANY($1)) AND ($2::text[] IS NULL OR se.series_uid = ANY($2))
GROUP BY se.series_uid
ORDER BY se.study_uid, se.series_number NULLS LAST, se.series_uid
"""

_INSTANCE_SQL = """
SELECT i.sop_instance_uid, i.series_uid, i.study_uid, i.sop_class_uid, i.transfer_syntax_uid, i.storage_key,
       i.instance_number, i.number_of_frames
FROM imaging_instance i JOIN imaging_series se ON se.series_uid = i.series_uid
WHERE ($1::text[] IS NULL OR i.study_uid = ANY($1)) AND ($2::text[] IS NULL OR i.series_uid = ANY($2))
  AND ($3::text[] IS NULL OR i.sop_instance_uid = ANY($3)) AND ($4::text[] IS NULL OR i.sop_class_uid = ANY($4))
ORDER BY i.study_uid, se.series_number NULLS LAST, i.series_uid, i.instance_number NULLS LAST, i.sop_instance_uid
"""


def _exact_value(params: Mapping[str, str], keyword: str) -> str | None:
    """A single value without wildcards for ``keyword`` (by keyword or tag), usable as an index filter."""
    tag = tag_key(tag_for_keyword(keyword))
    for name in (keyword, tag, tag.lower()):
        value = params.get(name)
        if value is not None and value.strip() and not any(c in value for c in "*?\\,"):
            return value.strip()
    return None


def _uids_param(params: Mapping[str, list[str]], keyword: str) -> list[str] | None:
    tag = tag_key(tag_for_keyword(keyword))
    given = [u.strip() for name in (keyword, tag, tag.lower()) for v in params.get(name, [])
             for u in re.split(r"[,\\]", v) if u.strip()]
    return given or None


def _intersect(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    if a is None:
        return b
    if b is None:
        return a
    return sorted(set(a) & set(b))


# --- reading files -------------------------------------------------------------------------------------

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
INLINE_BINARY_LIMIT = 1024


def file_dataset(source: ImagingSource, storage_key: str, keywords: tuple[str | int, ...] | None = None) -> JsonDataset:
    """DICOM JSON of a stored file's header (large binary values left out); {} when it cannot be read."""
    try:
        with source.storage.open(storage_key) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=list(keywords) if keywords else None)
        for elem in list(ds):
            if elem.VR in BINARY_VRS and elem.value is not None and len(elem.value) > INLINE_BINARY_LIMIT:
                del ds[elem.tag]
        out = ds.to_json_dict(bulk_data_threshold=1 << 30)
    except (StorageError, OSError, pydicom.errors.InvalidDicomError, ValueError, TypeError, KeyError) as exc:
        log.warning("QIDO-RS: attributes of %s could not be read: %s", storage_key, exc)
        return {}
    return {k: v for k, v in out.items() if not k.startswith("0002")}


def _needs_files(query: Query, indexed: Iterable[str], level_has_header: bool) -> bool:
    """Whether a match key is on something only the files hold (the study header is always indexed)."""
    known = set(indexed)
    for tag in query.key_tags():
        if tag in known:
            continue
        if level_has_header and tag in _HEADER_TAGS:
            continue
        return True
    return False


def _header_tags() -> frozenset[str]:
    from imaging_source.ingest import PATIENT_STUDY_KEYWORDS

    return frozenset(_tags(*PATIENT_STUDY_KEYWORDS)) - NOT_STUDY_LEVEL


_HEADER_TAGS = _header_tags()


# --- searching -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Scope:
    """What the request's path fixes, and which defaults its answers include (PS3.18 10.6.3.3)."""

    study_uid: str | None = None
    series_uid: str | None = None


# The studies of a candidate list that the requester may see (imaging_source.access.permitted_studies); None: no
# access policy. Applied before paging, so that limit and offset count only what the requester may see.
Permitted = Callable[[Iterable[str]], Awaitable[set[str]]] | None


async def _allowed(rows: list, permitted: Permitted) -> list:
    """The index ``rows`` (each with its ``study_uid``) of studies the requester may see."""
    if permitted is None or not rows:
        return rows
    keep = await permitted({r["study_uid"] for r in rows})
    return [r for r in rows if r["study_uid"] in keep]


def _page(items: list, query: Query) -> list:
    """The results from ``offset``, at most ``limit`` (and never more than MAX_RESULTS: the rest is warned of)."""
    end = query.offset + (MAX_RESULTS if query.limit is None else min(query.limit, MAX_RESULTS))
    if len(items) > end and (query.limit is None or query.limit > MAX_RESULTS):
        query.warnings.append(MORE_RESULTS_WARNING)
    return items[query.offset:end]


async def _study_datasets(conn, rows: list, base: str) -> list[JsonDataset]:
    counts = {r["study_uid"]: r for r in await conn.fetch(_STUDY_COUNTS_SQL, [r["study_uid"] for r in rows])}
    empty = {"series_count": 0, "instance_count": 0, "modalities": [], "sop_classes": []}
    return [study_dataset({**dict(counts.get(r["study_uid"], empty)), **dict(r)}, base) for r in rows]


async def search_studies(source: ImagingSource, query: Query, params: Mapping[str, list[str]],
                         permitted: Permitted = None) -> list[JsonDataset]:
    base = source.settings.wado_rs_url
    single = {k: v[0] for k, v in params.items() if len(v) == 1}
    uids = _uids_param(params, "StudyInstanceUID")
    patient_id, accession = _exact_value(single, "PatientID"), _exact_value(single, "AccessionNumber")
    in_sql = {tag_key(tag_for_keyword("StudyInstanceUID"))}
    in_sql |= {tag_key(tag_for_keyword("PatientID"))} if patient_id else set()
    in_sql |= {tag_key(tag_for_keyword("AccessionNumber"))} if accession else set()
    paged_in_sql = query.key_tags() <= in_sql  # the index filters exactly as the keys would: page there
    async with source.pool.acquire() as conn:
        window = MAX_RESULTS + 1 if query.limit is None else min(query.limit, MAX_RESULTS + 1)
        if paged_in_sql and permitted is not None:
            rows = await _permitted_head(conn, (uids, patient_id, accession), query.offset + window, permitted)
            page = _page(rows, query)
            return [project(ds, query, STUDY_DEFAULTS) for ds in await _study_datasets(conn, page, base)]
        rows = await conn.fetch(_STUDY_SQL, uids, patient_id, accession,
                                window if paged_in_sql else None, query.offset if paged_in_sql else 0)
        rows = await _allowed(rows, permitted)
        if paged_in_sql:
            page = _page(rows, replace(query, offset=0, warnings=query.warnings))
            return [project(ds, query, STUDY_DEFAULTS) for ds in await _study_datasets(conn, page, base)]
        if query.key_tags() & STUDY_COMPUTED:
            found = [ds for ds in await _study_datasets(conn, rows, base) if match(query, ds)]
            return [project(ds, query, STUDY_DEFAULTS) for ds in _page(found, query)]
        # Keys on the header only: match first, count only the page.
        placeholder = {"series_count": 0, "instance_count": 0, "modalities": [], "sop_classes": []}
        page = _page([r for r in rows if match(query, study_dataset({**placeholder, **dict(r)}, base))], query)
        return [project(ds, query, STUDY_DEFAULTS) for ds in await _study_datasets(conn, page, base)]


async def _permitted_head(conn, keys: tuple, wanted: int, permitted: Permitted) -> list:
    """The first ``wanted`` study rows the requester may see (fewer when there are no more), read from the index in
    growing windows: the access policy is asked about what a page needs, not about every study that matches."""
    read = wanted
    while True:
        rows = await conn.fetch(_STUDY_SQL, *keys, read, 0)
        kept = await _allowed(rows, permitted)
        if len(kept) >= wanted or len(rows) < read:
            return kept[:wanted]
        read *= 4


async def _studies_by_uid(conn, uids: list[str], base: str) -> dict[str, JsonDataset]:
    rows = await conn.fetch(_STUDY_SQL, uids, None, None, None, 0)
    return {ds[STUDY_UID]["Value"][0]: ds for ds in await _study_datasets(conn, rows, base)}


async def search_series(source: ImagingSource, query: Query, params: Mapping[str, list[str]],
                        scope: Scope, permitted: Permitted = None) -> list[JsonDataset]:
    base = source.settings.wado_rs_url
    studies = _intersect([scope.study_uid] if scope.study_uid else None, _uids_param(params, "StudyInstanceUID"))
    async with source.pool.acquire() as conn:
        rows = await _allowed(await conn.fetch(_SERIES_SQL, studies, _uids_param(params, "SeriesInstanceUID")),
                              permitted)
        study_of = await _studies_by_uid(conn, sorted({r["study_uid"] for r in rows}), base)
    need_files = _needs_files(query, SERIES_INDEXED | STUDY_COMPUTED, True)
    entities = []
    for r in rows:
        ds = dict(study_of.get(r["study_uid"], {}))
        ds.update(series_dataset(r, base))
        entities.append((r, ds))

    async def with_files(items: list) -> None:
        files = await asyncio.to_thread(
            lambda: [file_dataset(source, r["first_key"], SERIES_FILE_KEYWORDS) for r, _ in items])
        for (_r, ds), extra in zip(items, files, strict=True):
            for k, v in extra.items():
                if k in SERIES_FILE_TAGS:
                    ds.setdefault(k, v)

    if need_files:
        await with_files(entities)
    found = _page([e for e in entities if match(query, e[1])], query)
    if not need_files:
        await with_files(found)
    defaults = SERIES_DEFAULTS + (() if scope.study_uid else STUDY_DEFAULTS) + (STUDY_UID,)
    return [project(ds, query, defaults) for _, ds in found]


async def search_instances(source: ImagingSource, query: Query, params: Mapping[str, list[str]],
                           scope: Scope, permitted: Permitted = None) -> list[JsonDataset]:
    base = source.settings.wado_rs_url
    studies = _intersect([scope.study_uid] if scope.study_uid else None, _uids_param(params, "StudyInstanceUID"))
    series = _intersect([scope.series_uid] if scope.series_uid else None, _uids_param(params, "SeriesInstanceUID"))
    async with source.pool.acquire() as conn:
        rows = await _allowed(await conn.fetch(_INSTANCE_SQL, studies, series, _uids_param(params, "SOPInstanceUID"),
                                               _uids_param(params, "SOPClassUID")), permitted)
        series_rows = await conn.fetch(_SERIES_SQL, None, sorted({r["series_uid"] for r in rows})) if rows else []
        study_of = await _studies_by_uid(conn, sorted({r["study_uid"] for r in rows}), base) if rows else {}
    series_of = {r["series_uid"]: series_dataset(r, base) for r in series_rows}
    indexed = INSTANCE_INDEXED | SERIES_INDEXED | STUDY_COMPUTED
    need_files = _needs_files(query, indexed, True)
    defaults = (*INSTANCE_DEFAULTS, STUDY_UID, SERIES_UID)
    if not scope.series_uid:
        defaults += SERIES_DEFAULTS
    if not scope.study_uid:
        defaults += STUDY_DEFAULTS
    # Only what the index lacks is read from the files (all of it for includefield=all).
    wanted = set(defaults) | {tag_key(t) for t in query.returned} | query.key_tags()
    from_files = None if query.include_all else tuple(
        int(t, 16) for t in sorted(wanted - indexed - _HEADER_TAGS))
    entities = []
    for r in rows:
        ds = dict(study_of.get(r["study_uid"], {}))
        ds.update(series_of.get(r["series_uid"], {}))
        ds.update(instance_dataset(r, base))
        entities.append((r, ds))

    async def with_files(items: list) -> None:
        if from_files == ():
            return
        files = await asyncio.to_thread(lambda: [file_dataset(source, r["storage_key"], from_files) for r, _ in items])
        for (_r, ds), extra in zip(items, files, strict=True):
            for k, v in extra.items():
                ds.setdefault(k, v)

    if need_files:
        await with_files(entities)
    found = _page([e for e in entities if match(query, e[1])], query)
    if not need_files:
        await with_files(found)
    return [project(ds, query, defaults) for _, ds in found]


# --- HTTP ------------------------------------------------------------------------------------------------


DICOM_XML = "application/dicom+xml"
NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def response_type(header: str | None) -> str | None:
    """DICOM_JSON or DICOM_XML (multipart/related, one part per result) as the Accept header prefers; None
    when neither is acceptable. PS3.18 makes JSON the default."""
    for r in parse_accept(header):
        if r.media in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return DICOM_JSON
        if r.media in ("multipart/related", "multipart/*") and r.params.get("type", DICOM_XML).lower() == DICOM_XML:
            return DICOM_XML
    return None


def native_dicom_xml(dataset: JsonDataset) -> bytes:
    """One result in the PS3.19 Native DICOM Model, from its DICOM JSON (PS3.18 F.2 and its XML twin)."""
    from lxml import etree

    def fill(parent, items: Mapping[str, Any]) -> None:
        for tag, element in items.items():
            vr = element.get("vr", "UN")
            attribute = etree.SubElement(parent, f"{{{NATIVE_DICOM_NS}}}DicomAttribute", tag=tag, vr=vr)
            keyword = keyword_for_tag(int(tag, 16))
            if keyword:
                attribute.set("keyword", keyword)
            if "InlineBinary" in element:
                etree.SubElement(attribute, f"{{{NATIVE_DICOM_NS}}}InlineBinary").text = element["InlineBinary"]
            if "BulkDataURI" in element:
                etree.SubElement(attribute, f"{{{NATIVE_DICOM_NS}}}BulkData", uri=element["BulkDataURI"])
            for number, v in enumerate(element.get("Value") or [], start=1):
                if vr == "SQ":
                    fill(etree.SubElement(attribute, f"{{{NATIVE_DICOM_NS}}}Item", number=str(number)), v or {})
                elif vr == "PN":
                    name = etree.SubElement(attribute, f"{{{NATIVE_DICOM_NS}}}PersonName", number=str(number))
                    for group in ("Alphabetic", "Ideographic", "Phonetic"):
                        if (v or {}).get(group):
                            node = etree.SubElement(name, f"{{{NATIVE_DICOM_NS}}}{group}")
                            for part, text in zip(_PN_PARTS, v[group].split("^"), strict=False):
                                if text:
                                    etree.SubElement(node, f"{{{NATIVE_DICOM_NS}}}{part}").text = text
                else:
                    node = etree.SubElement(attribute, f"{{{NATIVE_DICOM_NS}}}Value", number=str(number))
                    if v is not None:
                        node.text = str(v)

    root = etree.Element(f"{{{NATIVE_DICOM_NS}}}NativeDicomModel", nsmap={None: NATIVE_DICOM_NS})
    root.set("{http://www.w3.org/XML/1998/namespace}space", "preserve")
    fill(root, dataset)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def multipart_xml(results: list[JsonDataset]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {DICOM_XML}\r\n\r\n".encode("ascii") + native_dicom_xml(r)
                    + b"\r\n" for r in results) + f"--{boundary}--\r\n".encode("ascii")
    return body, f'multipart/related; type="{DICOM_XML}"; boundary={boundary}'


def build_routes(source: ImagingSource) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    async def search(request: web.Request, level: Level, scope: Scope) -> web.Response:
        media = response_type(request.headers.get("Accept"))
        if media is None:
            raise web.HTTPNotAcceptable(text=f'search results are available as {DICOM_JSON} and as multipart/related; '
                                        f'type="{DICOM_XML}"')
        for uid in (scope.study_uid, scope.series_uid):
            if uid is not None and not is_uid(uid):
                raise web.HTTPBadRequest(text=f"{uid!r} in the path is not a valid DICOM UID")
        pairs = list(request.query.items())
        try:
            query = parse_query(level, pairs)
        except QueryError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        params: dict[str, list[str]] = {}
        for name, value in pairs:
            params.setdefault(name, []).append(value)
        from imaging_source.access import filter_results, permitted_studies

        permitted = permitted_studies(source, request)  # the access policy, before limit and offset
        if level is Level.STUDY:
            results = await search_studies(source, query, params, permitted)
        elif level is Level.SERIES:
            results = await search_series(source, query, params, scope, permitted)
        else:
            results = await search_instances(source, query, params, scope, permitted)
        results = await filter_results(source, request, results)  # and every result once more, by its study UID
        headers = {}
        if query.warnings:
            service = source.settings.wado_rs_url
            headers["Warning"] = ", ".join(f"299 {service}: {w}" for w in query.warnings)
        if not results:
            return web.Response(status=204, headers=headers)
        if media == DICOM_XML:
            body, content_type = multipart_xml(results)
            return web.Response(body=body, headers={**headers, "Content-Type": content_type})
        return web.Response(body=json.dumps(results).encode(), content_type=DICOM_JSON, headers=headers)

    @routes.get(PREFIX + "/studies")
    async def studies(request: web.Request) -> web.Response:
        return await search(request, Level.STUDY, Scope())

    @routes.get(PREFIX + "/series")
    async def all_series(request: web.Request) -> web.Response:
        return await search(request, Level.SERIES, Scope())

    @routes.get(PREFIX + "/studies/{study}/series")
    async def study_series(request: web.Request) -> web.Response:
        return await search(request, Level.SERIES, Scope(request.match_info["study"]))

    @routes.get(PREFIX + "/instances")
    async def all_instances(request: web.Request) -> web.Response:
        return await search(request, Level.INSTANCE, Scope())

    @routes.get(PREFIX + "/studies/{study}/instances")
    async def study_instances(request: web.Request) -> web.Response:
        return await search(request, Level.INSTANCE, Scope(request.match_info["study"]))

    @routes.get(PREFIX + "/studies/{study}/series/{series}/instances")
    async def series_instances(request: web.Request) -> web.Response:
        m = request.match_info
        return await search(request, Level.INSTANCE, Scope(m["study"], m["series"]))

    return routes
