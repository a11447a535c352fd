"""Mutual TLS for tests: client settings from a region's CA (xds-local's data dir), and test PKIs.

A test talking to an xds-local region (TLS by default) takes the region's own ``xds-local``
certificate with :func:`use_region`, which makes it this test process's TLS identity for our
clients (SOAP, MLLP, DICOM) and gives the arguments other clients need (requests, dcmtk).
Call :func:`ihe.tls.reset` when done, so that later tests talk plain TCP again.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from ihe import tls
from local_network import pki


@dataclass(frozen=True, slots=True)
class RegionClient:
    ca: Path
    cert: Path  # xds-local's own certificate (a node of the region)
    key: Path
    browser_cert: Path  # the clinician's browser certificate, for the portal
    browser_key: Path

    @property
    def context(self) -> ssl.SSLContext:
        ctx = tls.client_ssl()
        assert ctx is not None
        return ctx

    def requests_args(self, browser: bool = True) -> dict:
        """``cert`` and ``verify`` for requests."""
        pair = (self.browser_cert, self.browser_key) if browser else (self.cert, self.key)
        return {"cert": tuple(str(p) for p in pair), "verify": str(self.ca)}

    def dcmtk_args(self) -> list[str]:
        """dcmtk's (echoscu, storescu) options for TLS with this node's certificate."""
        return ["+tls", str(self.key), str(self.cert), "+cf", str(self.ca)]


def use_region(data_dir: Path) -> RegionClient:
    """Make the region's xds-local certificate this process's TLS identity (ihe.tls.configure)."""
    folder = data_dir / "tls"
    client = RegionClient(folder / "ca.crt", folder / "xds-local.crt", folder / "xds-local.key",
                          folder / "browser.crt", folder / "browser.key")
    assert client.cert.is_file(), f"xds-local made no certificates in {folder}"
    tls.configure(SimpleNamespace(tls_cert=str(client.cert), tls_key=str(client.key), tls_ca=str(client.ca)))
    return client


@dataclass(frozen=True, slots=True)
class PkiForTests:
    """A CA with node certificates, and the bad ones: another CA's, an expired one."""

    ca: Path
    nodes: dict[str, pki.NodeFiles]  # by name, issued by ``ca``
    other_ca_node: pki.NodeFiles  # issued by another CA (its ``ca`` field is still the trusted CA)
    other_ca: Path
    expired: pki.NodeFiles  # issued by ``ca``, expired yesterday

    @staticmethod
    def settings(files: pki.NodeFiles, pin: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(tls_cert=str(files.cert), tls_key=str(files.key), tls_ca=str(files.ca), tls_pin=pin)


def make_test_pki(folder: Path, names: list[str]) -> PkiForTests:
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = pki.make_ca("test affinity domain CA")
    ca = folder / "ca.crt"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    nodes = {n: pki.write_node(folder, n, *pki.make_node_cert(ca_key, ca_cert, n), ca) for n in names}
    other_key, other_cert = pki.make_ca("another domain CA")
    other_ca = folder / "other-ca.crt"
    other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    stranger = pki.write_node(folder, "stranger", *pki.make_node_cert(other_key, other_cert, "stranger"), ca)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
    expired = pki.write_node(folder, "expired", *pki.make_node_cert(ca_key, ca_cert, "expired", not_before=long_ago,
                                                                    days=30), ca)
    return PkiForTests(ca, nodes, stranger, other_ca, expired)
