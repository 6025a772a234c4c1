"""The strategy comparison behind ``seqproc bench`` (see bench/run.py)."""

__all__ = ["run", "scenarios"]
