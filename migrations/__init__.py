"""Alembic migrations; ``seqproc migrate`` runs them (``worker.migrate``)."""
