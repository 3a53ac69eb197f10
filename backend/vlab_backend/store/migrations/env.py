"""Alembic environment: migrations run against the URL the Database passes in."""

from __future__ import annotations

from alembic import context

from vlab_backend.store.schema import Base

config = context.config
connection = config.attributes.get("connection")


def run() -> None:
    if connection is None:
        context.configure(url=config.get_main_option("sqlalchemy.url"),
                          target_metadata=Base.metadata, literal_binds=True,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run()
