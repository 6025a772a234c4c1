"""seqproc from a FastAPI application (see README.md beside this file)."""
