"""The outbox's own migrations: they run in the application's database (``SEQPROC_OUTBOX_DATABASE_URL``), tracked in
the version table ``seqproc_outbox_version`` so that they never meet the application's own Alembic history."""
