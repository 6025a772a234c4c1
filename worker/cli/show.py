"""``seqproc show <entity> <id>``: the applied state of any domain's key.

``show article`` and ``show product`` read the built-in tables (a count checked against its rows). Any other entity
is read with its domain's own ``load``, as the worker reads it before it applies a batch, in a transaction that is
rolled back: ``seqproc show account 7`` (the built-in balance domain), ``seqproc show wallet 7`` (a domain named in
``SEQPROC_DOMAINS``). The domain's name works for its entity (``seqproc show balance 7``), and so does an entity key
(``seqproc show wallet:7``, ``seqproc show article:42``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import click
from pydantic import BaseModel

from seqproc.models.domain import Domain
from seqproc.worker.cli.text import plain, print_state

__all__ = ["ShowCommands", "domain_state", "state_fields"]


class ShowCommands(click.Group):
    """The static commands (``article``, ``product``), and one per entity of every other loaded domain."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *(domain.entity for domain in _domains())})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        static = self.commands.get(cmd_name)
        if static is not None:
            return static
        entity, colon, key = cmd_name.partition(":")
        if colon:  # an entity key: its entity's command, with the key given
            command = self.get_command(ctx, entity)
            return None if command is None or not key else _with_key(command, cmd_name, key)
        domain = next((d for d in _domains() if entity in (d.entity, d.name)), None)
        if domain is None:
            return None
        return self.commands.get(domain.entity) or _domain_command(domain)


def _domains() -> list[Domain]:
    from seqproc.models.domain import domains
    from seqproc.producer.api import current_settings

    current_settings()  # loads the domains the settings name
    # Not the framework's own (its events are control events, its entity a key of another domain).
    return [domain for domain in domains() if any(model.public for model in domain.events.values())]


def _with_key(command: click.Command, name: str, key: str) -> click.Command:
    """``command`` with its one argument given (``key``, converted by the argument's own type)."""
    argument = next(param for param in command.params if isinstance(param, click.Argument))
    options = [param for param in command.params if not isinstance(param, click.Argument)]

    def callback(**values: Any) -> Any:
        ctx = click.get_current_context()
        values[str(argument.name)] = argument.type_cast_value(ctx, key)
        return ctx.invoke(command, **values)

    return click.Command(name, params=options, callback=callback, help=command.help)


def _domain_command(domain: Domain) -> click.Command:
    model = next(iter(domain.events.values()))
    kind = click.INT if model.model_fields[domain.key].annotation is int else click.STRING

    def callback(key: Any, as_json: bool) -> None:
        print_state(domain_state(domain, key), as_json)

    return click.Command(
        domain.entity,
        params=[
            click.Argument(["key"], type=kind, metavar=domain.key.upper()),
            click.Option(["--json", "as_json"], is_flag=True, help="One JSON object."),
        ],
        callback=callback,
        help=plain(
            f"The state of {domain.entity} {domain.key.upper()}, as the {domain.name} domain's ``load`` reads it."
        ),
    )


def domain_state(domain: Domain, key: Any) -> dict[str, Any]:
    """The state ``domain``'s ``load`` gives ``key``, as fields, after ``entity`` (its entity key)."""
    from seqproc.models.db import make_engine
    from seqproc.models.settings import load_settings

    engine = make_engine(load_settings().database_url, pool_size=1)
    try:
        with engine.connect() as conn:  # rolled back on exit: a show never writes
            state = domain.load_states(conn, [key], [])[key]
    finally:
        engine.dispose()
    return {"entity": f"{domain.entity}:{key}", **state_fields(state)}


def state_fields(state: Any) -> dict[str, Any]:
    """A domain's state as named fields: a dataclass's, a pydantic model's, a mapping's items, an object's public
    attributes; anything else as ``state``."""
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.asdict(state)
    if isinstance(state, BaseModel):
        return state.model_dump(mode="json")
    if isinstance(state, Mapping):
        return {str(name): value for name, value in state.items()}
    if hasattr(state, "__dict__"):
        return {name: value for name, value in vars(state).items() if not name.startswith("_")}
    return {"state": state}
