"""The XDS metadata model (plain data classes), its ebRIM 3.0 wire transformers and validators.

As in IPF, the model knows nothing of XML: :mod:`ihe.metadata.ebrim` reads and writes
the wire format, :mod:`ihe.metadata.validate` checks the model and maps each failure
to one IHE error code.
"""
