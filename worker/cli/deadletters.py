"""``seqproc deadletter``: list what could not be applied, replay a parked key, retry or discard a dead letter by
its id (the rules: :mod:`seqproc.worker.ops.deadletters`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings, load_settings
from seqproc.worker.cli.codes import RET_FAILED


@click.group()
def deadletter() -> None:
    """What could not be applied: list it; replay a parked key, retry or discard a dead letter by its id."""


def _database_engine(settings: Settings | None = None) -> Any:
    from seqproc.models.db import make_engine

    return make_engine((settings or load_settings()).database_url)


@deadletter.command("list")
@click.option("--key", "entity_key", default=None, help="Only this entity (article:42, product:7).")
@click.option("--all", "include_closed", is_flag=True, help="Include the replayed, retried and discarded ones.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: dead_letters and parked_keys.")
def deadletter_list(entity_key: str | None, include_closed: bool, limit: int, as_json: bool) -> None:
    """Open dead letters, oldest first, with their id and error (--all: closed ones too); and the parked keys."""
    from seqproc.worker.ops.deadletters import list_dead_letters, parked_keys

    engine = _database_engine()
    try:
        with engine.connect() as conn:
            letters = list_dead_letters(conn, entity_key=entity_key, include_closed=include_closed, limit=limit)
            parked = parked_keys(conn)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"dead_letters": letters, "parked_keys": parked}, sort_keys=True))
        return
    table = Table(title=f"dead letters ({len(letters)})")
    # The id is what retry and discard take: never folded or cut.
    table.add_column("id", no_wrap=True, min_width=len(str(letters[-1]["id"])) if letters else 2)
    for column in ("partition", "entity", "idempotency key"):
        table.add_column(column)
    # The whole error, wrapped: the constraint or the field that failed often comes after the first 80 characters.
    # "fold" breaks a word longer than the column instead of cutting it off.
    table.add_column("error", overflow="fold")
    table.add_column("created")
    if include_closed:
        table.add_column("closed", overflow="fold")
    for d in letters:
        # Text, not str: an error's "[parameters: ...]" or a key with brackets would be taken for markup and vanish.
        row: list[RenderableType] = [
            str(d["id"]),
            str(d["partition"]),
            Text(d["entity_key"] or "-"),
            Text(d["event_key"] or "-"),
            Text(d["error"]),
            d["created_at"] or "",
        ]
        if include_closed:
            row.append(Text(_closed(d)))
        table.add_row(*row)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    if parked:
        console.print("parked: " + ", ".join(p["entity_key"] for p in parked))


def _closed(letter: dict[str, Any]) -> str:
    state = letter["state"]
    if state == "open":
        return "-"
    when = letter[f"{state}_at"]
    if state == "retried":
        return f"retried {when} as {letter['retried_as']}"
    if state == "discarded":
        return f"discarded {when} by {letter['discarded_by'] or '-'}: {letter['discard_reason']}"
    return f"replayed {when}"


@deadletter.command("replay")
@click.argument("key")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True, help="Wait this long for the worker.")
def deadletter_replay(key: str, wait_s: float) -> None:
    """Apply parked KEY's dead letters (article:42, product:7) in order, exactly once, then unpark it.

    The request goes through KEY's partition queue, so it takes its place in the stream: whatever was queued for KEY
    before it is dead-lettered first, and what comes after it is applied after the replayed events. A key that is not
    parked is refused (exit 1): retry or discard its dead letters by id."""
    from seqproc.producer.api import current_settings
    from seqproc.producer.publish import publisher_for
    from seqproc.worker.ops.deadletters import replay_event, require_parked

    settings = current_settings()
    event = replay_event(key)
    engine = _database_engine(settings)
    try:
        with engine.connect() as conn:
            require_parked(conn, key)
    finally:
        engine.dispose()
    receipt = publisher_for(settings).publish([event])[0]
    outcome = receipt.wait(timeout_s=wait_s)
    click.echo(f"{key}: {outcome.status} ({outcome.reason}) on partition {receipt.partition}")


@deadletter.command("retry")
@click.argument("letter_id", metavar="ID", type=click.IntRange(min=1))
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    help="Wait this long for the worker's outcome (0: do not wait).",
)
def deadletter_retry(letter_id: int, wait_s: float) -> None:
    """Send dead letter ID again through its partition, validated and routed with the current settings (once the
    cause is fixed: its domain loaded, the right partition count), and mark it retried.

    It keeps its idempotency key, so the ledger applies it once however often it is sent. Refused (exit 1, the
    letter stays open) when it is not open, when its event still cannot be sent, or when its key is parked (replay
    the key: it applies the key's dead letters in order). Exit 1 too when the worker dead-letters it again."""
    from seqproc.producer.api import current_settings
    from seqproc.producer.publish import publisher_for
    from seqproc.producer.receipt import wait_all
    from seqproc.worker.ops.deadletters import retry_dead_letter

    settings = current_settings()  # first: it loads SEQPROC_DOMAINS, whose event types the retry validates against
    engine = _database_engine(settings)
    try:
        with engine.begin() as conn:
            receipts = retry_dead_letter(conn, letter_id, publisher_for(settings))
    finally:
        engine.dispose()
    for receipt in receipts:
        click.echo(
            f"dead letter {letter_id}: sent again as {receipt.event_type} {receipt.idempotency_key!r} "
            f"on partition {receipt.partition}"
        )
    if wait_s == 0:
        return
    again = 0
    for receipt, outcome in zip(receipts, wait_all(receipts, timeout_s=wait_s), strict=True):
        click.echo(f"{receipt.event_type} {receipt.idempotency_key!r}: {_outcome_text(outcome)}")
        again += outcome.effective.reason in ("dead_lettered", "parked")
    if again:
        click.echo(
            f"seqproc: {again} event(s) of dead letter {letter_id} dead-lettered again (seqproc deadletter list)",
            err=True,
        )
        sys.exit(RET_FAILED)


def _outcome_text(outcome: Outcome) -> str:
    text = outcome.status + (f" ({outcome.reason})" if outcome.reason else "")
    if outcome.first is not None:
        text += f", first: {_outcome_text(outcome.first)}"
    return text + (f": {outcome.error}" if outcome.error else "")


@deadletter.command("discard")
@click.argument("letter_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--reason", required=True, help="Why it is not applied (kept with the letter).")
def deadletter_discard(letter_id: int, reason: str) -> None:
    """Close dead letter ID without applying it, keeping the reason, who (user@host) and when. Hidden from
    `deadletter list` (--all shows it) and no longer counted by `status`; a parked key's replay skips it."""
    import getpass
    import socket

    from seqproc.worker.ops.deadletters import discard_dead_letter

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's uid without a passwd entry)
        user = "unknown"
    engine = _database_engine()
    try:
        with engine.begin() as conn:
            discard_dead_letter(conn, letter_id, reason=reason, by=f"{user}@{socket.gethostname()}")
    finally:
        engine.dispose()
    click.echo(f"dead letter {letter_id}: discarded ({reason.strip()})")
