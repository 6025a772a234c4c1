"""``seqproc enqueue <type> ...``: send one event from the shell, as application code would.

One command per public event type of every domain (the built-ins, and those of ``SEQPROC_DOMAINS``), generated from
its schema: each field is an argument, in the schema's order, typed as declared, except the idempotency key
(``--key``), which events keyed by their fields (a reservation) do not take. With ``--wait``, a ``rejected`` outcome
exits with ``RET_REJECTED`` (7) once printed.
"""

from __future__ import annotations

import json
from typing import Any

import click

from seqproc.worker.cli.codes import RET_REJECTED
from seqproc.worker.cli.text import outcome_fields, plain, value_text

__all__ = ["enqueue"]


class _EventCommands(click.Group):
    """The commands are the registered event types, known once the domains are loaded (at first use)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from seqproc.producer.build import public_types

        _load()
        return sorted(public_types())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from seqproc.producer.build import public_types

        _load()
        return _command(cmd_name) if cmd_name in public_types() else None


def _load() -> None:
    from seqproc.producer.api import current_settings

    current_settings()  # loads the domains the settings name


@click.group(cls=_EventCommands)
def enqueue() -> None:
    """Send one event from the shell (as application code would)."""


def _send(event_type: str, fields: dict[str, Any], wait_s: float | None, as_json: bool) -> None:
    from seqproc.producer.api import current_settings
    from seqproc.producer.build import build_event
    from seqproc.producer.publish import publisher_for

    event = build_event(event_type, {k: v for k, v in fields.items() if v is not None})
    receipt = publisher_for(current_settings()).publish([event])[0]
    result: dict[str, Any] = {
        "type": event_type,
        "idempotency_key": receipt.idempotency_key,
        "event_id": receipt.event_id,
        "partition": receipt.partition,
        "queue": receipt.queue,
    }
    outcome = None if wait_s is None else receipt.wait(timeout_s=wait_s)
    if as_json:
        click.echo(json.dumps(result | ({} if outcome is None else {"outcome": outcome.to_wire()}), sort_keys=True))
    else:
        fields = result | ({} if outcome is None else outcome_fields(outcome))
        click.echo(" ".join(f"{k}={value_text(v)}" for k, v in fields.items()))
    if outcome is not None and outcome.effective.status == "rejected":
        click.get_current_context().exit(RET_REJECTED)


def _command(event_type: str) -> click.Command:
    from seqproc.models.domain import model_of
    from seqproc.producer.build import fields_of

    model = model_of(event_type)
    params: list[click.Parameter] = []
    for name in fields_of(event_type):
        if name == "idempotency_key":
            params.append(
                click.Option(["--key", "idempotency_key"], default=None, help="Idempotency key (default: a fresh one).")
            )
        else:
            kind = int if model.model_fields[name].annotation is int else str
            params.append(click.Argument([name], type=kind))
    params.append(
        click.Option(["--wait", "wait_s"], type=float, default=None, help="Wait this many seconds for the outcome.")
    )
    params.append(click.Option(["--json", "as_json"], is_flag=True, help="One JSON object."))

    def callback(wait_s: float | None, as_json: bool, **values: Any) -> None:
        _send(event_type, values, wait_s, as_json)

    doc = (model.__doc__ or "").strip() or f"Send a {event_type} event."
    return click.Command(event_type, params=params, callback=callback, help=plain(doc))
