"""An audit log of applied events, written by a worker hook (``SEQPROC_HOOKS=examples.audit_log.audit``)."""
