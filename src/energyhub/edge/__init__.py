"""energyhub edge."""
