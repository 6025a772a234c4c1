"""The CLI's exit codes (dramatiq-style names): scripts can tell a bad setting from a broker that is down."""

RET_OK = 0
#: The command ran and found a problem (the demo's invariants did not hold, a bench run's memory grew).
RET_FAILED = 1
#: click's code for a bad command line.
RET_USAGE = 2
RET_CONFIG = 3
RET_INVALID_EVENT = 4
RET_UNAVAILABLE = 5
RET_TIMEOUT = 6
