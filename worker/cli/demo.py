"""``seqproc demo`` (``make demo``): the main job, end to end.

Migrates, starts worker processes for all partitions, sends a burst (threads liking and unliking one hot article
and a spread of others, some events sent twice; more reservations than a product has, plus releases, some of them
before their reservation), shows progress while it sends and while the workers catch up, waits for every outcome,
stops the workers, and prints what happened with a line saying whether every invariant held. Without PostgreSQL or
Redis it runs on the embedded default.
"""

from __future__ import annotations

import contextlib
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from seqproc import producer
from seqproc.migrations import migrate
from seqproc.models.clients import redis_client
from seqproc.models.db import can_connect, make_engine
from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings, load_settings, mask_url
from seqproc.models.tables.likes import ArticleLike
from seqproc.models.wire import is_redis_url
from seqproc.producer.receipt import Receipt
from seqproc.worker.cli.codes import RET_FAILED, RET_OK
from seqproc.worker.ops.inspect import article_state, check_invariants, product_state
from seqproc.worker.ops.logs import setup_logging
from seqproc.worker.processes import WorkerGroup, split_partitions

#: Units of the demo product, and how many reservations compete for them.
DEMO_STOCK = 100
DEMO_RESERVATIONS = 160
#: Share of like events sent twice with the same idempotency key (a client retrying).
RESEND_SHARE = 0.1
#: How often the progress bars are brought up to date. The senders only append their receipts to a list; the
#: "sent" bar reads its length.
PROGRESS_INTERVAL_S = 0.1
#: Outcomes read per round trip while counting them.
OUTCOME_CHUNK = 2000


@click.command()
@click.option("--threads", default=16, show_default=True, help="Producer threads.")
@click.option("--events", "events_per_thread", default=400, show_default=True, help="Like/unlike events per thread.")
@click.option("--workers", default=2, show_default=True, help="Worker processes (partitions split between them).")
@click.option("--embedded", is_flag=True, help="Use the embedded mode even if PostgreSQL and Redis answer.")
def demo(threads: int, events_per_thread: int, workers: int, embedded: bool) -> None:
    """Migrate, start workers, send a burst of likes and reservations, and check every invariant."""
    setup_logging("WARNING")
    ok = run_demo(threads=threads, events_per_thread=events_per_thread, workers=workers, force_embedded=embedded)
    sys.exit(RET_OK if ok else RET_FAILED)


@dataclass
class Burst:
    """What the demo sent, and what it expects: the model the database must match."""

    hot_article: int
    articles: list[int]
    product: int
    receipts: list[Receipt] = field(default_factory=list)
    liked: dict[tuple[int, int], bool] = field(default_factory=dict)
    resent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class LikeStep:
    """One like or unlike, decided before sending so that the number of events is known up front."""

    article: int
    user: int
    like: bool
    idempotency_key: str
    resend: bool

    @property
    def events(self) -> int:
        return 1 + self.resend


@dataclass(frozen=True)
class ReservationStep:
    """One reservation, with a release before it (which makes it be refused) or after it, or neither."""

    reservation_id: str
    quantity: int
    release_before: bool
    release_after: bool

    @property
    def events(self) -> int:
        return 1 + self.release_before + self.release_after


def services_reachable(settings: Settings) -> str | None:
    """None if PostgreSQL and Redis answer, else why not (one line)."""
    if not can_connect(settings.database_url):
        return f"PostgreSQL at {mask_url(settings.database_url)} is not reachable"
    for url in (settings.broker_url, settings.result_backend):
        if is_redis_url(url):
            try:
                redis_client(url, connect_timeout_s=2, timeout_s=2).ping()
            except redis.RedisError:
                return f"Redis at {mask_url(url)} is not reachable"
    return None


def embedded_settings(base: Settings, directory: Path) -> Settings:
    return base.model_copy(
        update={
            "database_url": f"sqlite:///{directory / 'seqproc-demo.db'}",
            "broker_url": "memory://localhost/",
            "result_backend": "memory://",
            "task_events": False,
        }
    )


@contextlib.contextmanager
def worker_processes(settings: Settings, count: int) -> Iterator[WorkerGroup]:
    """``count`` real ``seqproc worker`` processes sharing the partitions; stopped (SIGTERM) on exit."""
    with tempfile.TemporaryDirectory(prefix="seqproc-demo-workers-") as directory:
        group = WorkerGroup(settings, split_partitions(settings.partitions, count), Path(directory))
        try:
            group.wait_ready()
            yield group
        finally:
            group.stop()


def plan_likes(burst: Burst, thread: int, events: int) -> list[LikeStep]:
    rng = random.Random(thread)
    # Each thread speaks for its own users: the order of one user's actions is the order this thread sent them.
    users = [thread * 100_000 + n for n in range(1, 301)]
    return [
        LikeStep(
            article=burst.hot_article if rng.random() < 0.5 else rng.choice(burst.articles),
            user=rng.choice(users),
            like=rng.random() < 0.65,
            idempotency_key=f"demo-{burst.hot_article}-{thread}-{n}",
            resend=rng.random() < RESEND_SHARE,
        )
        for n in range(events)
    ]


def plan_reservations(burst: Burst, thread: int, count: int) -> list[ReservationStep]:
    rng = random.Random(1000 + thread)
    return [
        ReservationStep(
            reservation_id=f"demo-{burst.product}-{thread}-{n}",
            quantity=rng.randint(1, 2),
            # A release that overtakes its reservation: the reservation must then be refused (cancelled).
            release_before=n % 20 == 0,
            release_after=n % 5 == 1,
        )
        for n in range(count)
    ]


def send_likes(burst: Burst, steps: Sequence[LikeStep]) -> None:
    for step in steps:
        action = producer.like if step.like else producer.unlike
        sent = [action(step.article, step.user, idempotency_key=step.idempotency_key) for _ in range(step.events)]
        with burst.lock:
            burst.receipts.extend(sent)
            burst.liked[(step.article, step.user)] = step.like
            burst.resent += step.resend


def send_reservations(burst: Burst, steps: Sequence[ReservationStep]) -> None:
    for step in steps:
        sent = []
        if step.release_before:
            sent.append(producer.release(burst.product, step.reservation_id))
        sent.append(producer.reserve(burst.product, step.quantity, reservation_id=step.reservation_id))
        if step.release_after:
            sent.append(producer.release(burst.product, step.reservation_id))
        with burst.lock:
            burst.receipts.extend(sent)


def send_with_progress(
    progress: Progress,
    burst: Burst,
    likes: Sequence[Sequence[LikeStep]],
    reservations: Sequence[Sequence[ReservationStep]],
) -> None:
    """The restock, then each plan in a thread of its own, with a "sent" bar."""
    total = 1 + sum(s.events for plan in likes for s in plan) + sum(s.events for plan in reservations for s in plan)
    task = progress.add_task("sent", total=total)
    burst.receipts.append(producer.restock(burst.product, DEMO_STOCK))
    with ThreadPoolExecutor(len(likes) + len(reservations)) as pool:
        jobs = [pool.submit(send_likes, burst, plan) for plan in likes]
        jobs += [pool.submit(send_reservations, burst, plan) for plan in reservations]
        # This thread only watches: the senders append their receipts and never wait for the display. Outcomes are
        # counted once sending is over: reading them meanwhile competes with the senders for Redis (measured: sending
        # ~20% slower when read ten times a second).
        while wait(jobs, timeout=PROGRESS_INTERVAL_S).not_done:
            progress.update(task, completed=len(burst.receipts))
        for job in jobs:
            job.result()
    progress.update(task, completed=len(burst.receipts))


def wait_with_progress(progress: Progress, receipts: Sequence[Receipt], timeout_s: float) -> list[Outcome]:
    """Every outcome, with an "outcomes" bar."""
    task = progress.add_task("outcomes", total=len(receipts))
    deadline = time.monotonic() + timeout_s
    done = 0
    while done < len(receipts) and time.monotonic() < deadline:
        advanced = count_outcomes(receipts, done)
        if advanced - done < OUTCOME_CHUNK:
            time.sleep(PROGRESS_INTERVAL_S / 2)
        done = advanced
        progress.update(task, completed=done)
    outcomes = producer.wait_all(receipts, timeout_s=max(1.0, deadline - time.monotonic()))
    progress.update(task, completed=len(outcomes))
    return outcomes


def count_outcomes(receipts: Sequence[Receipt], done: int) -> int:
    """How many receipts, from the first, have their outcome, given that the first ``done`` have. Outcomes arrive
    roughly in send order, so the prefix that has them is a good measure and costs one round trip."""
    chunk = receipts[done : done + OUTCOME_CHUNK]
    if not chunk:
        return done
    found = chunk[0]._store.get_many([r.event_id for r in chunk])
    return done + next((i for i, o in enumerate(found) if o is None), len(found))


def run_demo(
    *, threads: int, events_per_thread: int, workers: int, force_embedded: bool, console: Console | None = None
) -> bool:
    console = console or Console()
    settings = load_settings()
    unreachable = "--embedded was given" if force_embedded else services_reachable(settings)
    with contextlib.ExitStack() as stack:
        if unreachable:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seqproc-demo-")))
            settings = embedded_settings(settings, directory)
            console.print(
                f"[yellow]{unreachable}: running on the embedded default (SQLite file {directory}/seqproc-demo.db, "
                "in-process worker on Celery's memory transport)[/yellow]"
            )
        migrate(settings.database_url)
        producer.configure(settings)
        stack.callback(producer.configure, None)
        burst, outcomes, sent_s, elapsed_s = run_burst(
            console,
            settings,
            threads=threads,
            events_per_thread=events_per_thread,
            workers=workers,
            embedded=bool(unreachable),
        )
        # The workers have stopped; the database holds the result.
        return report(console, settings, burst, outcomes, sent_s, elapsed_s)


def run_burst(
    console: Console, settings: Settings, *, threads: int, events_per_thread: int, workers: int, embedded: bool
) -> tuple[Burst, list[Outcome], float, float]:
    with contextlib.ExitStack() as stack:
        if embedded:
            from seqproc.worker.runner import embedded_worker

            stack.enter_context(embedded_worker(settings))
            worker_line = "1 in-process worker, all partitions"
        else:
            stack.enter_context(worker_processes(settings, workers))
            worker_line = f"{workers} worker processes over {settings.partitions} partitions"

        base = (int(time.time()) % 100_000) * 1_000
        burst = Burst(hot_article=base + 1, articles=list(range(base + 2, base + 52)), product=base + 1)
        console.print(
            f"seqproc demo: {worker_line}; {threads} threads x {events_per_thread} like/unlike events "
            f"(hot article {burst.hot_article} and 50 others, {RESEND_SHARE:.0%} sent twice), "
            f"{DEMO_RESERVATIONS} reservations against {DEMO_STOCK} units of product {burst.product}"
        )
        likes = [plan_likes(burst, t, events_per_thread) for t in range(threads)]
        reservations = [plan_reservations(burst, t, DEMO_RESERVATIONS // 2) for t in range(2)]
        with Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            started = time.monotonic()
            send_with_progress(progress, burst, likes, reservations)
            sent_s = time.monotonic() - started
            outcomes = wait_with_progress(progress, burst.receipts, timeout_s=300)
            elapsed_s = time.monotonic() - started
        console.print(f"all {len(outcomes)} outcomes in; stopping workers")
    return burst, outcomes, sent_s, elapsed_s


def report(
    console: Console, settings: Settings, burst: Burst, outcomes: list[Outcome], sent_s: float, elapsed_s: float
) -> bool:
    statuses = Counter(o.status for o in outcomes)
    reasons = Counter(o.reason for o in outcomes if o.status == "rejected")
    engine = make_engine(settings.database_url)
    problems = []
    try:
        with engine.connect() as conn:
            hot = article_state(conn, burst.hot_article)
            demo_articles = [burst.hot_article, *burst.articles]
            rows = {
                (a, u)
                for a, u in conn.execute(
                    select(ArticleLike.article_id, ArticleLike.user_id).where(ArticleLike.article_id.in_(demo_articles))
                )
            }
            spread_ok = all(article_state(conn, a)["consistent"] for a in burst.articles)
            stock = product_state(conn, burst.product)
            invariants = check_invariants(conn)
    finally:
        engine.dispose()
    expected_rows = {pair for pair, liked in burst.liked.items() if liked}
    if rows != expected_rows:
        problems.append(f"like rows differ from the model ({len(rows)} rows, {len(expected_rows)} expected)")
    if statuses["duplicate"] != burst.resent:
        problems.append(f"{statuses['duplicate']} duplicates reported, {burst.resent} sent")
    if stock["available"] + stock["reserved"] + stock["sold"] != DEMO_STOCK:
        problems.append(f"stock does not add up to {DEMO_STOCK}: {stock}")
    problems += invariants.violations

    table = Table(title="seqproc demo", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("events sent", f"{len(outcomes):,}")
    table.add_row("applied", f"{statuses['applied']:,}")
    table.add_row("duplicates skipped", f"{statuses['duplicate']:,} (of {burst.resent:,} sent twice)")
    table.add_row("rejected", f"{statuses['rejected']:,} " + ", ".join(f"{r}: {n}" for r, n in reasons.most_common()))
    table.add_row("hot article like_count / like rows", f"{hot['like_count']:,} / {hot['likes']:,}")
    table.add_row("50 spread articles", "count == rows for each" if spread_ok else "MISMATCH")
    table.add_row(
        f"product {burst.product}: available / reserved / sold",
        f"{stock['available']} / {stock['reserved']} / {stock['sold']} (of {DEMO_STOCK})",
    )
    table.add_row("sending took", f"{sent_s:.2f} s")
    table.add_row("elapsed (first send to last applied)", f"{elapsed_s:.2f} s")
    table.add_row("events per second", f"{len(outcomes) / elapsed_s:,.0f}")
    console.print(table)
    if problems:
        console.print("[bold red]INVARIANTS BROKEN:[/bold red] " + "; ".join(problems))
        return False
    console.print(
        "[bold green]every invariant held:[/bold green] like_count == like rows for every article, the like rows "
        "equal the producer's model, each duplicate skipped once, available >= 0 and "
        "available + reserved + sold == stock received for every product"
    )
    return True
