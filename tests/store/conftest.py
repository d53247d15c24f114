from tests.store.databases import database, database_spec

__all__ = ["database", "database_spec"]
