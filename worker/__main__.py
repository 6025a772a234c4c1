"""``python -m worker ...`` is ``seqproc ...`` (the demo starts its workers this way, with this interpreter)."""

from worker.cli import main

main()
