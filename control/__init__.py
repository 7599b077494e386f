"""energyhub control."""
