-- WADO-RS metadata (DICOM JSON of the stored file, pixel data left out) kept once computed: it depends only on
-- the stored bytes, which storage_key names, so it is reset whenever an instance's storage_key changes.
ALTER TABLE imaging_instance ADD COLUMN metadata_json text;
