"""IHE XDS-I.b Imaging Document Source: DICOM in, KOS manifests published (RAD-68), RAD-69, WADO."""
