"""energyhub dashboards."""
