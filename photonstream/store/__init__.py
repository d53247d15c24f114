"""Persistent state of the request API: SQLAlchemy models, alembic migrations, streams and policy stores."""
