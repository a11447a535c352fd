"""Document consumer: client library and CLI for integration engineers (web page to come)."""
