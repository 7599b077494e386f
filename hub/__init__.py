"""energyhub hub."""
