"""How the command line writes for people: help without reStructuredText, values without Python's reprs."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import click

from seqproc.models.outcomes import Outcome

#: ``code``, :class:`Name`, :func:`name` and the like: Sphinx markup in docstrings, raw noise in a terminal.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str | None:
    """``text`` (a docstring) without its reStructuredText markup: ````amount```` -> ``amount``."""
    if text is None:
        return None
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


def plain_help(command: click.Command) -> None:
    """Strip the markup from the help of ``command``, its parameters and, for a group, every subcommand it lists
    statically."""
    command.help = plain(command.help)
    command.short_help = plain(command.short_help)
    for param in command.params:
        if isinstance(param, click.Option):
            param.help = plain(param.help)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            plain_help(sub)


def value_text(value: Any) -> str:
    """One value as a person reads it: ``-`` for nothing, JSON for a list or a mapping (never a Python repr)."""
    if value is None:
        return "-"
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def print_state(state: Mapping[str, Any], as_json: bool) -> None:
    """A key's state: one JSON object, or one aligned ``name  value`` line per field."""
    if as_json:
        click.echo(json.dumps(state, sort_keys=True, default=str))
        return
    width = max((len(k) for k in state), default=0)
    for key, value in state.items():
        click.echo(f"{key:<{width}}  {value_text(value)}")


def outcome_fields(outcome: Outcome) -> dict[str, str]:
    """An outcome as flat ``name=value`` fields: ``outcome=rejected reason=insufficient_stock``; a duplicate adds
    its first outcome (``first=applied``)."""
    fields: dict[str, str] = {"outcome": outcome.status}
    if outcome.reason is not None:
        fields["reason"] = outcome.reason
    if outcome.first is not None:
        fields["first"] = outcome.first.status
        if outcome.first.reason is not None:
            fields["first_reason"] = outcome.first.reason
    return fields
