"""energyhub ingest."""
