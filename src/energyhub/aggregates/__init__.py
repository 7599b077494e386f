"""Quarter-hour and one-minute aggregates of what the ingest stored (``docs/data.md``)."""
