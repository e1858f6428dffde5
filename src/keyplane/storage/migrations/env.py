"""Alembic environment: the engine comes from the caller (keyplane.storage.migrate)."""

from __future__ import annotations

from alembic import context

from keyplane.storage.tables import metadata

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
