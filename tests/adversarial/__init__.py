"""Attacks and careless requests from the outside checks (issue 13), kept as a suite of their own."""
