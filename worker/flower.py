"""``seqproc flower``: Flower, Celery's monitoring dashboard, on the workers' app and broker.

Flower builds its view from the workers' task events (``SEQPROC_TASK_EVENTS``, on by default) and from remote-control
replies (``inspect``). It listens on 127.0.0.1 unless told otherwise; on any other address it requires basic auth.
"""

from __future__ import annotations

import ipaddress
import sys

import click

from models.errors import ConfigError
from models.settings import Settings, load_settings, mask_url


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses no other host can reach."""
    if address.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def flower_argv(settings: Settings, port: int, address: str) -> list[str]:
    """Flower's command line (``celery flower ...``); it holds the basic-auth password: never print it."""
    if not is_loopback(address) and not settings.flower_basic_auth:
        raise ConfigError(
            f"SEQPROC_FLOWER_BASIC_AUTH is required when Flower binds to {address} (not a loopback address): "
            "set it to user:password, or bind to 127.0.0.1"
        )
    argv = ["flower", f"--port={port}", f"--address={address}", "--persistent=False"]
    if settings.flower_basic_auth:
        argv.append(f"--basic-auth={settings.flower_basic_auth}")
    if settings.flower_url_prefix:
        argv.append(f"--url-prefix={settings.flower_url_prefix}")
    return argv


@click.command()
@click.option("--port", type=click.IntRange(1, 65_535), default=None, help="Port (default: SEQPROC_FLOWER_PORT).")
@click.option("--address", default=None, help="Address to bind (default: SEQPROC_FLOWER_ADDRESS, 127.0.0.1).")
def flower(port: int | None, address: str | None) -> None:
    """Run Flower, the monitoring dashboard: workers, tasks (one per message) and their outcomes."""
    # --address goes through the setting's validation (an empty address would mean every interface).
    settings = load_settings() if address is None else load_settings(flower_address=address)
    argv = flower_argv(settings, port or settings.flower_port, settings.flower_address)

    from worker.app import configure

    app = configure(settings)
    auth = "basic auth" if settings.flower_basic_auth else "no auth"
    click.echo(
        f"flower: http://{settings.flower_address}:{port or settings.flower_port}/{settings.flower_url_prefix}"
        f" ({auth}), broker {mask_url(settings.broker_url)}",
        err=True,
    )
    sys.exit(app.start(argv=argv) or 0)
