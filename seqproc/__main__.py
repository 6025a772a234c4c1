"""``python -m seqproc ...`` is ``seqproc ...`` (the demo and the benchmark start their workers this way)."""

from seqproc.worker.cli import main

main()
