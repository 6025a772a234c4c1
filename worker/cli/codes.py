"""The CLI's exit codes (dramatiq-style names): scripts can tell a bad setting from a broker that is down."""

RET_OK = 0
#: The command ran and found a problem (the demo's invariants did not hold, a bench run's memory grew).
RET_FAILED = 1
#: click's code for a bad command line.
RET_USAGE = 2
#: A bad setting, or a database ``seqproc migrate`` has not set up (missing, or without seqproc's tables).
RET_CONFIG = 3
RET_INVALID_EVENT = 4
#: A service could not be reached: PostgreSQL or the broker (the message names its variable); an event was not sent.
RET_UNAVAILABLE = 5
#: The event was sent (or may have been: the broker stopped answering after the push), but its outcome is not
#: known: none came within ``--wait``, or the result backend could not be read. Send it again only with the same
#: ``--key``.
RET_TIMEOUT = 6
#: ``--wait``: the outcome came, and it is ``rejected`` (a duplicate of a rejected event too).
RET_REJECTED = 7
