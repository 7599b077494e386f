"""The wire contract: messages, topics, device roles and which messages are readings. Built on the domain only."""
