"""One line per fault test with what was measured (``pytest tests/faults -s | grep FAULT``): the fault matrix of the
docs and of the closing notes comes from these lines, not from memory."""

from __future__ import annotations


def report_applied(fault: str, *, injected: int, sent: int, applied: int, out_of_order: int = 0) -> None:
    """``report`` for a test that counts what was applied (ledger rows, like rows): short is lost, over is doubled."""
    report(
        fault,
        injected=injected,
        sent=sent,
        lost=max(0, sent - applied),
        doubled=max(0, applied - sent),
        out_of_order=out_of_order,
    )


def report(
    fault: str,
    *,
    injected: int,
    sent: int,
    lost: int,
    doubled: int,
    out_of_order: int,
    lost_detected: int | None = None,
) -> None:
    """``lost_detected``: for direct publishes, the events seqproc's loss detection counted lost."""
    detected = "" if lost_detected is None else f" lost_detected={lost_detected}"
    print(
        f"FAULT | {fault} | injected {injected} | events {sent} | lost={lost} doubled={doubled} "
        f"out_of_order={out_of_order}{detected}"
    )
