"""Alembic migrations of the photonstream store (env.py and versions/)."""
