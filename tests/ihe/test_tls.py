"""ihe.tls's pure parts (options, pins, the one-line reasons) and the local CA (local_network.pki)."""

import ipaddress
import ssl
import stat
from types import SimpleNamespace

import pytest
from cryptography import x509

from ihe import tls
from local_network import pki


def test_no_tls_options_mean_plain_and_some_of_them_are_refused():
    assert tls.TlsConfig.from_settings(SimpleNamespace()) is None
    with pytest.raises(tls.TlsSetupError, match="missing --tls-key, --tls-ca"):
        tls.TlsConfig.from_settings(SimpleNamespace(tls_cert="a.crt"))


def test_pins_are_sha256_fingerprints_with_or_without_colons():
    pin = "AB" * 32
    assert tls.parse_pins(f" {':'.join([pin[i:i + 2] for i in range(0, 64, 2)])} ,") == {pin.lower()}
    with pytest.raises(tls.TlsSetupError, match="not a SHA-256 fingerprint"):
        tls.parse_pins("abc")


def test_refusals_read_as_one_line():
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_code, expired.verify_message = 10, "certificate has expired"
    assert tls.explain(expired, "https://r/x") == "TLS to https://r/x refused: its certificate has expired"
    unknown = ssl.SSLCertVerificationError(1, "x")
    unknown.verify_code, unknown.verify_message = 20, "unable to get local issuer certificate"
    assert "not issued by the affinity domain's CA" in tls.describe_refusal(unknown, "10.0.0.7:5")
    line = tls.describe_refusal(unknown, "10.0.0.7:5")
    assert line.startswith("TLS connection from 10.0.0.7:5 refused: the client's")
    plain = ssl.SSLError(1, "[SSL: HTTP_REQUEST] http request")
    assert "plain HTTP to a TLS port" in tls.describe_refusal(plain, "p")
    assert tls.reason(ValueError("not TLS")) is None
    body = tls.http_refusal("TLS connection from p refused: not pinned")
    assert body.startswith(b"HTTP/1.1 403 Forbidden\r\n") and body.endswith(b"\r\n\r\nTLS connection from p refused: "
                                                                            b"not pinned\n")


def test_the_region_pki_is_made_once_then_reused(tmp_path):
    first = pki.ensure_region_pki(tmp_path, ["registry", "portal"], ("0.0.0.0",))
    assert first.created == ["CA", "registry", "portal", "browser"]
    cert = x509.load_pem_x509_certificate(first.nodes["registry"].cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert stat.S_IMODE(first.nodes["registry"].key.stat().st_mode) == 0o600
    assert first.browser_p12.is_file()
    again = pki.ensure_region_pki(tmp_path, ["registry", "portal"], ("0.0.0.0",))
    assert again.created == []
    assert again.nodes["registry"].cert.read_bytes() == first.nodes["registry"].cert.read_bytes()
    # a node certificate serves both ends: its server and client contexts build (TLS 1.2+, host names checked)
    config = tls.TlsConfig(first.nodes["portal"].cert, first.nodes["portal"].key, first.nodes["portal"].ca)
    assert tls.server_context(config).minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.client_context(config).check_hostname
