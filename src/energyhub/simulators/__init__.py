"""energyhub simulators."""
