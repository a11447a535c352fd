"""Client library of the network, one module per transaction family.

- :mod:`consumer.client.soap`: :class:`SoapClient` (SOAP 1.2, WS-Addressing, MTOM, streaming)
- :mod:`consumer.client.source`: ITI-41 Provide and Register (metadata defaults, MTOM upload)
- :mod:`consumer.client.retrieve`: ITI-43 Retrieve Document Set (to memory or streamed to files)
- :mod:`consumer.client.query`: ITI-18 stored queries
"""

from consumer.client.retrieve import DocumentRequest, RetrievedDocument, RetrieveResult, retrieve_document_set
from consumer.client.soap import SoapClient, SoapFaultError, SoapResult, TransportError
from consumer.client.source import (
    SubmitResult,
    document_entry,
    provide_and_register,
    submission_package,
)

__all__ = [
    "DocumentRequest",
    "RetrieveResult",
    "RetrievedDocument",
    "SoapClient",
    "SoapFaultError",
    "SoapResult",
    "SubmitResult",
    "TransportError",
    "document_entry",
    "provide_and_register",
    "retrieve_document_set",
    "submission_package",
]
