"""IHE XDS.b Document Registry: ITI-42, ITI-18, patient identity feed (ITI-8) and PIX query (ITI-9)."""
