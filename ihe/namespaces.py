"""XML namespaces and the ebRIM/XDS constants that travel on the wire."""

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSA = "http://www.w3.org/2005/08/addressing"
XOP = "http://www.w3.org/2004/08/xop/include"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
XDSI = "urn:ihe:rad:xdsi-b:2009"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

NSMAP = {
    "soap": SOAP12,
    "wsa": WSA,
    "xop": XOP,
    "rim": RIM,
    "lcm": LCM,
    "query": QUERY,
    "rs": RS,
    "xdsb": XDSB,
    "xdsi": XDSI,
}


def qn(ns: str, local: str) -> str:
    """Clark notation ``{ns}local`` for lxml."""
    return f"{{{ns}}}{local}"


# WS-Addressing actions (ITI TF-2 and RAD TF-2).
ACTION_ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ACTION_ITI42_RESPONSE = "urn:ihe:iti:2007:RegisterDocumentSet-bResponse"
ACTION_ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
ACTION_ITI57_RESPONSE = "urn:ihe:iti:2010:UpdateDocumentSetResponse"
ACTION_ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ACTION_ITI18_RESPONSE = "urn:ihe:iti:2007:RegistryStoredQueryResponse"
ACTION_ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ACTION_ITI41_RESPONSE = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
ACTION_ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ACTION_ITI43_RESPONSE = "urn:ihe:iti:2007:RetrieveDocumentSetResponse"
ACTION_RAD69 = "urn:ihe:rad:2009:RetrieveImagingDocumentSet"
ACTION_RAD69_RESPONSE = "urn:ihe:rad:2009:RetrieveImagingDocumentSetResponse"

# ITI-62 Delete Document Set (Remove Metadata) and ITI-86 Remove Documents (ITI TF-2b 3.62, 3.86).
RMD = "urn:ihe:iti:rmd:2017"
ACTION_ITI62 = "urn:ihe:iti:2010:DeleteDocumentSet"
ACTION_ITI62_RESPONSE = "urn:ihe:iti:2010:DeleteDocumentSetResponse"
ACTION_ITI86 = "urn:ihe:iti:2017:RemoveDocuments"
ACTION_ITI86_RESPONSE = "urn:ihe:iti:2017:RemoveDocumentsResponse"
