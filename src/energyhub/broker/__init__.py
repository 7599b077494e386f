"""energyhub broker: Mosquitto locked down per gateway (accounts, ACL, TLS, mosquitto.conf). See README.md."""
