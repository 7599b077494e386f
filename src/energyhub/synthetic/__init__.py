"""Synthetic data: PV, load and charging-session physics. The simulators serve it live; planning and control's
offline simulation generate years of it. Built on the domain only."""
