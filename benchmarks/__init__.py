"""Benchmarks behind ``photonstream bench ...``: each prints a table for people and one JSON line for scripts."""
