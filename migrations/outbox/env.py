"""Alembic environment of the outbox tables (see ``seqproc.migrations.outbox``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from seqproc.models.tables.outbox import OutboxBase

#: Not ``alembic_version``: the application's database may have its own Alembic history.
VERSION_TABLE = "seqproc_outbox_version"

target_metadata = OutboxBase.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the outbox migrations through `seqproc migrate` (seqproc.migrations.migrate)")
_run(connection)
