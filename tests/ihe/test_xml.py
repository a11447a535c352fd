"""The hardened XML parser refuses every classic XML attack and oversized input."""

import pytest

from ihe.xml import XMLRejected, parse_xml, text_of


def test_parses_plain_xml_with_namespaces():
    root = parse_xml(b'<a xmlns="urn:x"><b> text </b></a>')
    assert root.tag == "{urn:x}a"
    assert text_of(root[0]) == "text"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>', "DOCTYPE"),
        (b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>', "DOCTYPE"),
        (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x"> %p;]><a/>', ""),
        (b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><lolz>&lol2;</lolz>', "DOCTYPE"),
        (b"<a>&undefined;</a>", "malformed"),
        (b"<a><b></a>", "malformed"),
        (b"", "malformed"),
        (b"not xml at all", "malformed"),
    ],
)
def test_rejects_hostile_or_malformed_xml(data, reason):
    with pytest.raises(XMLRejected) as err:
        parse_xml(data)
    assert reason in err.value.reason


def test_external_entity_is_never_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    data = f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]><a>&x;</a>'.encode()
    with pytest.raises(XMLRejected) as err:
        parse_xml(data)
    assert "TOP-SECRET" not in err.value.reason


def test_rejects_oversized_input():
    with pytest.raises(XMLRejected) as err:
        parse_xml(b"<a>" + b"x" * 2000 + b"</a>", max_bytes=1000)
    assert "exceeds the limit" in err.value.reason


def test_rejects_doctype_in_utf16_document():
    data = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>'.encode("utf-16")
    with pytest.raises(XMLRejected, match="DOCTYPE"):
        parse_xml(data)


def test_doctype_after_comments_in_prolog_is_rejected():
    with pytest.raises(XMLRejected, match="DOCTYPE"):
        parse_xml(b'<?xml version="1.0"?>\n<!-- hi -->\n<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>')
