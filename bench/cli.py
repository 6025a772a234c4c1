"""``seqproc bench``: the benchmark's command line (the ``seqproc`` CLI hands ``seqproc bench ...`` to it).

The benchmark lives in the repository, not in the wheel: ``seqproc bench`` runs from a source checkout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from seqproc.models.errors import ConfigError, SeqprocError
from seqproc.models.settings import load_settings
from seqproc.worker.ops.logs import setup_logging

from . import run as bench_run
from . import server_report, server_run
from .harness import ProducerVariant
from .server_run import SERVER_STRATEGIES, ServerLoad
from .servers import DEFAULT_SERVER_WORKERS, SERVERS
from .wrk import find_wrk


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


#: What each producer process variant does, for ``--help`` (the flags and their values: ``ProducerVariant.CHOICES``).
VARIANT_HELP = {
    "receipts": "drop = the seqproc calls' receipts are not kept (the check reads the database's state only; "
    "outcomes are counted only when kept).",
    "connect": "hook = seqproc.connect() in each forked process before the clock; first-call = none, the first "
    "send connects.",
    "warm_up": "other-article = each process sends one like on another article before the clock (applied before it "
    "starts).",
    "after_sending": "exit = each process reports and exits right after its last send; the clock still stops when "
    "every event is applied.",
}


def variant_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--receipts``, ``--connect``, ``--warm-up``, ``--after-sending``: one option per ``ProducerVariant`` field."""
    for key, (flag, allowed) in reversed(ProducerVariant.CHOICES.items()):
        command = click.option(
            flag,
            key,
            type=click.Choice(allowed),
            default=allowed[0],
            show_default=True,
            help=f"With --producer-mode processes: {VARIANT_HELP[key]}",
        )(command)
    return command


def producer_variant(
    producer_mode: str, *, receipts: str, connect: str, warm_up: str, after_sending: str, instead: str | None
) -> ProducerVariant:
    """The producer processes' variant from its flags; a ``ConfigError`` naming the flag when one is used where it
    does not apply (``instead``: the option that replaces the comparison, e.g. ``--server``)."""
    variant = ProducerVariant(receipts=receipts, connect=connect, warm_up=warm_up, after_sending=after_sending)
    for key, value in variant.changed().items():
        flag = ProducerVariant.CHOICES[key][0]
        if instead is not None:
            raise ConfigError(f"{flag} {value}: only for the strategy comparison, not with {instead}")
        if producer_mode != "processes":
            raise ConfigError(
                f"{flag} {value}: needs --producer-mode processes (it says how each forked producer process "
                f"behaves; --producer-mode is {producer_mode})"
            )
    return variant


def _show(console: Console, as_json: bool, data: dict[str, Any], table: Table, ratios: dict[str, float]) -> None:
    """One run: its JSON object on stdout (``--json``), or its table and ratios."""
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    console.print(table)
    for name, ratio in ratios.items():
        console.print(f"  {name}: {ratio}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})  # as every seqproc command
@click.option("--scenario", type=click.Choice(["hot", "spread", "flash"]), default="hot", show_default=True)
@click.option("--producers", "producers_csv", default="32", show_default=True, help="Producers; a list runs each.")
@click.option(
    "--events", "events", type=click.IntRange(1, 1_000_000), default=200, show_default=True, help="Events per producer."
)
@click.option(
    "--strategies",
    "strategies_csv",
    default="all",
    show_default=True,
    help="Comma-separated: atomic, for_update, optimistic, serializable, redis_writebehind, "
    "seqproc_single, seqproc_batched, seqproc_outbox (all: these); seqproc_observed (batched with metrics, JSON logs, "
    "task events).",
)
@click.option(
    "--producer-mode",
    type=click.Choice(["threads", "processes"]),
    default="threads",
    show_default=True,
    help="Producers as threads of one process, or as processes (forked with the app imported, connected before the "
    "clock): the prefork web server's shape, one event per call.",
)
@variant_options
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="seqproc worker processes.")
@click.option("--scale", "scale_csv", default=None, help="Also run seqproc_batched with these worker counts (1,2,4).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run instead of tables.")
@click.option("--chart/--no-chart", default=True, show_default=True, help="Save a PNG chart in the results folder.")
@click.option(
    "--results-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Default: bench/results/ under the current folder.",
)
@click.option(
    "--cpu",
    "cpu_calls",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Instead: CPU per single-event producer call and per one-event message in the worker, over this many; "
    "then the events/s one worker drains in messages of 100 (the batched ceiling).",
)
@click.option(
    "--server",
    type=click.Choice(SERVERS),
    default=None,
    help="Instead: noop, atomic, seqproc and outbox as endpoints of an app served by this server, driven by wrk "
    "(every request a new like on one hot article): server-<server>.json and .png.",
)
@click.option(
    "--server-workers",
    type=click.IntRange(1, 256),
    default=None,
    help="With --server: its worker processes (default: gunicorn 16 sync workers, uvicorn 2).",
)
@click.option("--connections", type=click.IntRange(1, 10_000), default=32, show_default=True, help="With --server.")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="With --server: wrk's.")
@click.option("--duration-s", type=click.IntRange(1, 3600), default=8, show_default=True, help="With --server.")
@click.option(
    "--database",
    default=bench_run.BENCH_DATABASE,
    show_default=True,
    help="The benchmark's own database on the configured PostgreSQL server (each run empties its tables).",
)
@click.option(
    "--durability-cost",
    "durability_calls",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Instead: this many single-event calls with SEQPROC_PUBLISH_DURABILITY=async, then replica (the broker "
    "needs a replica), from --producers threads: calls/s, latency, and replica's ratio to async.",
)
@click.option(
    "--soak-s",
    type=float,
    default=None,
    help="Instead: run seqproc_batched on 'spread' this long and check the worker's memory stays flat.",
)
def bench(
    scenario: str,
    producers_csv: str,
    events: int,
    strategies_csv: str,
    producer_mode: str,
    receipts: str,
    connect: str,
    warm_up: str,
    after_sending: str,
    workers: int,
    scale_csv: str | None,
    as_json: bool,
    chart: bool,
    results_dir: Path | None,
    cpu_calls: int | None,
    server: str | None,
    server_workers: int | None,
    connections: int,
    threads: int,
    duration_s: int,
    database: str,
    durability_calls: int | None,
    soak_s: float | None,
) -> None:
    """Compare seqproc with row locks, atomic updates, optimistic and serializable retries, and Redis write-behind."""
    setup_logging("WARNING")
    settings = bench_run.bench_settings(load_settings(), database=database)
    every = SERVER_STRATEGIES if server else bench_run.STRATEGIES
    strategies = list(every) if strategies_csv == "all" else _csv(strategies_csv)
    known = SERVER_STRATEGIES if server else (*bench_run.STRATEGIES, *bench_run.OPTIONAL_STRATEGIES)
    unknown = [s for s in strategies if s not in known]
    if unknown:
        raise ConfigError(f"--strategies: {unknown[0]!r} is not one of {', '.join(known)}")
    try:
        producer_counts = [int(p) for p in _csv(producers_csv)]
    except ValueError:
        raise ConfigError(f"--producers: {producers_csv!r} is not a number or a comma-separated list") from None
    instead = next(
        (
            flag
            for flag, used in (("--server", server), ("--cpu", cpu_calls), ("--soak-s", soak_s), ("--scale", scale_csv))
            if used is not None
        ),
        None,
    )
    variant = producer_variant(
        producer_mode, receipts=receipts, connect=connect, warm_up=warm_up, after_sending=after_sending, instead=instead
    )
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 160)
    directory = results_dir or bench_run.RESULTS_DIR
    if server is not None:
        if connections < threads:
            raise ConfigError(f"--connections: {connections} is fewer than --threads {threads} (wrk's rule)")
        find_wrk()  # before anything starts: say how to install it
        bench_run.prepare(settings)
        processes = server_workers or DEFAULT_SERVER_WORKERS[server]
        load = ServerLoad(server, processes, connections, threads, duration_s, workers)
        served = server_run.compare(settings, load, strategies, console=console)
        saved = [server_report.save(served, directory)]
        if chart:
            saved.append(server_report.chart(served, directory))
        _show(console, as_json, served.to_json(), server_report.table(served), served.ratios())
        console.print(f"[dim]saved {', '.join(str(p) for p in saved)}[/dim]")
        return
    bench_run.prepare(settings)
    if cpu_calls is not None:
        from . import cpu

        report = cpu.measure(settings, cpu_calls)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.json").write_text(json.dumps(report, indent=2) + "\n")
        click.echo(json.dumps(report, sort_keys=True))
        return
    if durability_calls is not None:
        from . import durability

        report = durability.measure(settings, durability_calls, int(_csv(producers_csv)[-1]))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "durability.json").write_text(json.dumps(report, indent=2) + "\n")
        click.echo(json.dumps(report, sort_keys=True))
        return
    if soak_s is not None:
        report = bench_run.soak(settings, duration_s=soak_s, producers=int(_csv(producers_csv)[-1]))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
        click.echo(json.dumps({k: v for k, v in report.items() if k != "samples"}, sort_keys=True))
        if not report["flat_within_20_percent"]:
            raise SeqprocError(f"worker memory grew from {report['rss_mb_after_warmup']} to {report['rss_mb_max']} MB")
        return
    comparisons = []
    for count in producer_counts:
        comparison = bench_run.compare(
            settings,
            scenario,
            count,
            events,
            strategies,
            workers=workers,
            mode=producer_mode,
            variant=variant,
            console=console,
        )
        comparisons.append(comparison)
        _show(console, as_json, comparison.to_json(), bench_run.table(comparison), comparison.ratios())
    saved = bench_run.save(comparisons, directory)
    if chart:
        saved.append(bench_run.chart(comparisons, bench_run.chart_path(comparisons, directory)))
    if scale_csv:
        scale = []
        for count in [int(w) for w in _csv(scale_csv)]:
            c = bench_run.compare(
                settings, scenario, producer_counts[-1], events, ["seqproc_batched"], workers=count, console=console
            )
            scale.append({"workers": count, **c.results[0].to_json()})
            if as_json:
                click.echo(json.dumps({"scenario": scenario, "scale": scale[-1]}, sort_keys=True))
        path = directory / f"{scenario}-scale.json"
        path.write_text(json.dumps(scale, indent=2) + "\n")
        saved.append(path)
        if not as_json:
            for row in scale:
                console.print(f"  workers={row['workers']}: {row['events_per_s']:,.0f} events/s")
    console.print(f"[dim]saved {', '.join(str(p) for p in saved)}[/dim]")
