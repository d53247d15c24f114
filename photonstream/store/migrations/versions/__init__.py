"""Alembic revisions, one file each, applied in order by ``Database.upgrade``."""
