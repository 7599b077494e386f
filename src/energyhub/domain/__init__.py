"""The domain model: topology, contracts, limits, quarter-hour time, EAN codes, the data clock, the network view.

Imports nothing of energyhub's; every other layer builds on it.
"""
