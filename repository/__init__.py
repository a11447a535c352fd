"""IHE XDS.b Document Repository: ITI-41 Provide and Register, ITI-43 Retrieve (one per hospital)."""
