"""QIDO-RS matching rules as pure functions (PS3.4 C.2.2.2): parse the parameters, match DICOM JSON."""

from __future__ import annotations

import pytest

from imaging_source.qido_rs import Level, QueryError, match, parse_query, project


def ds(**elements: tuple[str, list]) -> dict:
    from pydicom.datadict import tag_for_keyword

    return {f"{tag_for_keyword(k):08X}": ({"vr": vr, "Value": v} if v else {"vr": vr})
            for k, (vr, v) in elements.items()}


def matches(params: list[tuple[str, str]], dataset: dict) -> bool:
    return match(parse_query(Level.INSTANCE, params), dataset)


@pytest.mark.parametrize(("query", "stored", "expected"), [
    ("-10", "105959.5", True),     # a reduced-precision upper bound covers its whole hour
    ("-10", "110000", False),
    ("1030-", "1030", True),
    ("1030-", "102959", False),
    ("10:30-11:00", "1045", True),  # the ACR-NEMA colon form is read too
    ("103000.5-", "103000.4", False),
])
def test_time_ranges(query, stored, expected):
    assert matches([("StudyTime", query)], ds(StudyTime=("TM", [stored]))) is expected


@pytest.mark.parametrize(("query", "stored", "expected"), [
    ("2024-", "20240101093000", True),
    ("-2023", "20231231235959.999999", True),
    ("-2023", "20240101", False),
    ("20240101100000-20240101110000", "202401011030+0100", True),
    ("202402", "20240229", True),  # a month names every moment in it
])
def test_datetime_ranges(query, stored, expected):
    assert matches([("AcquisitionDateTime", query)], ds(AcquisitionDateTime=("DT", [stored]))) is expected


def test_person_names_any_component_group_case_insensitive():
    name = ds(PatientName=("PN", [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}]))
    assert matches([("PatientName", "YAMADA^tarou")], name)
    assert matches([("PatientName", "山田*")], name)
    assert not matches([("PatientName", "Yamada")], name)


def test_multi_valued_attribute_matches_when_any_value_does():
    image = ds(ImageType=("CS", ["ORIGINAL", "PRIMARY", "AXIAL"]))
    assert matches([("ImageType", "AXIAL")], image)
    assert not matches([("ImageType", "axial")], image)  # CS is case-sensitive


def test_empty_values_match_only_with_emptyvaluematching():
    empty = ds(ReferringPhysicianName=("PN", []))
    assert not matches([("ReferringPhysicianName", "A*")], empty)
    assert matches([("ReferringPhysicianName", "A*"), ("emptyvaluematching", "true")], empty)
    assert matches([("ReferringPhysicianName", "")], empty)  # universal


def test_numbers_match_by_value():
    assert matches([("SliceThickness", "5")], ds(SliceThickness=("DS", [5.0])))
    assert matches([("InstanceNumber", "07")], ds(InstanceNumber=("IS", [7])))
    assert not matches([("InstanceNumber", "8")], ds(InstanceNumber=("IS", [7])))


def test_uid_lists_by_comma_backslash_or_repetition():
    instance = ds(SOPInstanceUID=("UI", ["1.2.3"]))
    assert matches([("SOPInstanceUID", "1.2.4,1.2.3")], instance)
    assert matches([("SOPInstanceUID", "1.2.4\\1.2.3")], instance)
    assert matches([("SOPInstanceUID", "1.2.4"), ("00080018", "1.2.3")], instance)
    assert not matches([("SOPInstanceUID", "1.2.4")], instance)


def test_combined_date_time_only_when_both_are_given():
    late_on_first_day = ds(StudyDate=("DA", ["20240101"]), StudyTime=("TM", ["230000"]))
    # Combined: 2024-01-01 23:00 lies between 2024-01-01 00:00 and 2024-01-02 08:00, though 23:00 is after 08:00.
    assert matches([("StudyDate", "20240101-20240102"), ("StudyTime", "-0800")], late_on_first_day)
    assert not matches([("StudyTime", "-0800")], late_on_first_day)
    assert not matches([("StudyDate", "20231231-20240101"), ("StudyTime", "0800-2200")], late_on_first_day)
    no_time = ds(StudyDate=("DA", ["20240101"]))
    assert matches([("StudyDate", "20240101"), ("StudyTime", "0800-0900")], no_time)


def test_sequence_matching_any_item():
    item = {"00401001": {"vr": "SH", "Value": ["RP2"]}}
    dataset = {"00400275": {"vr": "SQ", "Value": [{"00401001": {"vr": "SH", "Value": ["RP1"]}}, item]}}
    assert matches([("RequestAttributesSequence.RequestedProcedureID", "RP2")], dataset)
    assert matches([("00400275.00401001", "RP*")], dataset)
    assert not matches([("RequestAttributesSequence.RequestedProcedureID", "RP3")], dataset)


def test_projection_returns_defaults_includefields_and_keys_empty_when_unknown():
    query = parse_query(Level.STUDY, [("includefield", "StudyDescription,00100030"), ("PatientID", "H1")])
    out = project(ds(PatientID=("LO", ["H1"]), PatientSex=("CS", ["F"])), query, ("00100040",))
    assert out == {"00081030": {"vr": "LO"}, "00100020": {"vr": "LO", "Value": ["H1"]},
                   "00100030": {"vr": "DA"}, "00100040": {"vr": "CS", "Value": ["F"]}}


@pytest.mark.parametrize("params", [
    [("includefield", "all"), ("includefield", "NoSuch")],
    [("StudyDate", "20240230")],
    [("StudyDate", "2024-01-01")],
    [("AcquisitionDateTime", "2024x")],
    [("limit", "1.5")],
    [("emptyvaluematching", "yes")],
    [("PixelData", "x")],
])
def test_refused(params):
    with pytest.raises(QueryError):
        parse_query(Level.STUDY, params)


def test_results_are_capped_with_a_warning(monkeypatch):
    from imaging_source import qido_rs

    monkeypatch.setattr(qido_rs, "MAX_RESULTS", 3)
    query = parse_query(Level.INSTANCE, [])
    assert qido_rs._page(list(range(10)), query) == [0, 1, 2]
    assert query.warnings == [qido_rs.MORE_RESULTS_WARNING]
    query = parse_query(Level.INSTANCE, [("offset", "8")])
    assert qido_rs._page(list(range(10)), query) == [8, 9]
    assert query.warnings == []
    query = parse_query(Level.INSTANCE, [("limit", "2")])
    assert qido_rs._page(list(range(10)), query) == [0, 1]
    assert query.warnings == []  # the client asked for fewer: nothing to warn of
