"""Consumers: readers of photonstream streams (plain ZeroMQ reader, buffer client, torch, tof, xtal, dashboard)."""
