"""Alembic environment: migrations run on the connection ``Database.upgrade`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from photonstream.store.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # plain `alembic -x url=...` use, e.g. to write a new revision
        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
        with create_engine(url).connect() as own:
            _migrate(own)
            own.commit()
        return
    _migrate(connection)


def _migrate(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
