"""Per-event log lines: key=value messages, and the same fields as JSON fields."""

from __future__ import annotations

import io
import json
import logging

from seqproc.worker.ops.logs import JsonFormatter, log_event, logfmt


def test_logfmt_quotes_what_would_break_the_pairs() -> None:
    assert logfmt({"a": 1, "b": "two"}) == "a=1 b=two"
    assert logfmt({"error": 'say "hi" = bye', "empty": ""}) == 'error="say \\"hi\\" = bye" empty=""'
    assert logfmt({"k": "line\nbreak"}) == 'k="line\\nbreak"'


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test-logs-{id(stream)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_a_rejected_event_line_carries_partition_key_and_idempotency_key() -> None:
    logger, stream = capture(logging.Formatter("%(message)s"))
    log_event(
        logger,
        logging.INFO,
        outcome="rejected",
        partition=3,
        key="product:7",
        idempotency_key="reserve:order-1",
        type="reserve",
        reason="insufficient_stock",
        first=None,
    )
    assert stream.getvalue().strip() == (
        "outcome=rejected partition=3 key=product:7 idempotency_key=reserve:order-1 type=reserve "
        "reason=insufficient_stock"
    )


def test_the_json_format_has_the_event_fields_as_fields() -> None:
    logger, stream = capture(JsonFormatter())
    log_event(logger, logging.WARNING, outcome="duplicate", partition=0, key="article:1", idempotency_key="k 1")
    line = json.loads(stream.getvalue())
    assert line["level"] == "WARNING"
    assert (line["outcome"], line["partition"], line["key"], line["idempotency_key"]) == (
        "duplicate",
        0,
        "article:1",
        "k 1",
    )
    assert line["message"] == 'outcome=duplicate partition=0 key=article:1 idempotency_key="k 1"'
    assert "reason" not in line


def test_lines_below_the_level_cost_nothing() -> None:
    logger, stream = capture(logging.Formatter("%(message)s"))
    logger.setLevel(logging.WARNING)
    log_event(logger, logging.INFO, outcome="duplicate", partition=0)
    assert stream.getvalue() == ""
