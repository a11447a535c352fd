"""Affinity-domain code lists: loading the TOML file, membership, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ihe.metadata.codes import ATTRIBUTES, CodeList, load_code_list
from ihe.metadata.model import Code, LocalizedString

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "codes.toml"


def code(value: str, scheme: str, display: str | None = None) -> Code:
    return Code(value, scheme, LocalizedString(display) if display else None)


@pytest.fixture(scope="module")
def example() -> CodeList:
    return load_code_list(EXAMPLE)


def test_example_file_restricts_the_documented_attributes(example: CodeList) -> None:
    assert example.attributes() == frozenset(ATTRIBUTES) - {"folderCodeList", "associationDocumentation"}
    assert all(example.restricts(a) for a in example.attributes())
    assert not example.restricts("folderCodeList") and not example.restricts("associationDocumentation")


@pytest.mark.parametrize(
    ("attribute", "value", "scheme"),
    [
        ("formatCode", "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1"),  # XDS-I KOS manifest
        ("eventCodeList", "CT", "1.2.840.10008.2.16.4"),
        ("eventCodeList", "MR", "1.2.840.10008.2.16.4"),
        ("confidentialityCode", "N", "2.16.840.1.113883.5.25"),
        ("confidentialityCode", "R", "2.16.840.1.113883.5.25"),
        ("confidentialityCode", "V", "2.16.840.1.113883.5.25"),
        ("classCode", "DI", "1.2.840.10008.2.16.4"),
        ("typeCode", "371527006", "2.16.840.1.113883.6.96"),
        ("formatCode", "urn:ihe:rad:PDF", "1.3.6.1.4.1.19376.1.2.3"),
    ],
)
def test_example_file_allows_domain_codes(example: CodeList, attribute: str, value: str, scheme: str) -> None:
    assert example.allows(attribute, code(value, scheme))


def test_membership_needs_code_and_scheme(example: CodeList) -> None:
    assert example.allows("eventCodeList", code("CT", "1.2.840.10008.2.16.4"))
    assert not example.allows("eventCodeList", code("CT", "2.16.840.1.113883.6.96"))  # same code, other scheme
    assert not example.allows("eventCodeList", code("XX", "1.2.840.10008.2.16.4"))  # other code, same scheme
    # A code of one attribute is not allowed for another one.
    assert not example.allows("formatCode", code("CT", "1.2.840.10008.2.16.4"))


def test_display_name_does_not_decide_membership(example: CodeList) -> None:
    assert example.allows("confidentialityCode", code("N", "2.16.840.1.113883.5.25", "Normal (local wording)"))
    assert example.display_name("confidentialityCode", "N", "2.16.840.1.113883.5.25") == "normal"
    assert example.display_name("confidentialityCode", "Q", "2.16.840.1.113883.5.25") is None


def test_absent_attribute_is_not_restricted(example: CodeList) -> None:
    assert example.allows("folderCodeList", code("anything", "1.2.3"))
    assert CodeList().allows("classCode", code("anything", "1.2.3"))
    assert CodeList.from_mapping({}).attributes() == frozenset()


def test_from_mapping_builds_the_same_list_as_the_file() -> None:
    codes = CodeList.from_mapping({"classCode": {"codes": [{"code": "A", "scheme": "1.2", "display": "a"}]}})
    assert codes.allows("classCode", code("A", "1.2"))
    assert not codes.allows("classCode", code("B", "1.2"))
    assert codes.attributes() == {"classCode"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[classCode\ncodes = []", "not valid TOML"),
        ('[bogusCode]\ncodes = [{ code = "A", scheme = "1.2" }]', r"unknown attribute \[bogusCode\]"),
        ("[classCode]\n", "'codes' must be an array"),
        ("[classCode]\ncodes = []", "'codes' is empty"),
        ('[classCode]\ncodes = "A"', "'codes' must be an array"),
        ('[classCode]\ncodes = [{ code = "A", scheme = "1.2" }]\nextra = 1', "unknown key.*extra"),
        ('[classCode]\ncodes = [{ code = "A" }]', r"\[classCode\] code #1: 'scheme' must be a non-empty string"),
        ('[classCode]\ncodes = [{ code = "", scheme = "1.2" }]', "'code' must be a non-empty string"),
        ('[classCode]\ncodes = [{ code = 5, scheme = "1.2" }]', "'code' must be a non-empty string"),
        ('[classCode]\ncodes = [{ code = "A", scheme = "1.2", display = 3 }]', "'display' must be a string"),
        ('[classCode]\ncodes = [{ code = "A", codeSystem = "1.2" }]', "unknown key.*codeSystem"),
        ('[classCode]\ncodes = ["A"]', r"code #1: expected a table"),
        ('classCode = "A"', r"\[classCode\]: expected a table"),
        (
            '[typeCode]\ncodes = [{ code = "A", scheme = "1.2" }, { code = "A", scheme = "1.2", display = "x" }]',
            r"\[typeCode\] code #2: duplicate code 'A' in scheme '1.2'",
        ),
    ],
)
def test_malformed_file_raises_clear_value_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "codes.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_code_list(path)
    assert str(path) in str(info.value)  # the error names the file


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_code_list(tmp_path / "nope.toml")
