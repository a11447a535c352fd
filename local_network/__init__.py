"""``xds-local``: the whole network on one machine, on an embedded PostgreSQL, for trying it out."""
