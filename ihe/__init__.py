"""Shared IHE protocol code used by every service.

SOAP 1.2 with WS-Addressing, MTOM/XOP, the ebRIM 3.0 metadata model and its wire
transformers, IHE error codes, configuration and database plumbing live here once;
the services (registry, repository, imaging_source, consumer) import them.
"""
