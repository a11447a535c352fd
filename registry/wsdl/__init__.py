"""The registry's WSDL, served at ``/registry?wsdl`` for generic SOAP toolkits."""

from __future__ import annotations

from functools import cache
from importlib import resources
from xml.sax.saxutils import quoteattr


@cache
def _template() -> str:
    return (resources.files(__name__) / "registry.wsdl").read_text(encoding="utf-8")


def registry_wsdl(location: str) -> bytes:
    """The WSDL with the service address set to ``location`` (the URL it was fetched from)."""
    return _template().replace('"@LOCATION@"', quoteattr(location)).encode("utf-8")
