"""Getting a built dataset: the catalogue (`data_manifest.json`), downloads and copies, finding one by name."""
