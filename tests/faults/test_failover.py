"""`seqproc worker --partitions auto`: workers share the partitions through leases, rebalance when one joins or
leaves, and take over from a worker paused past its lease, which then cannot commit (fencing)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import psycopg
import pytest
from sqlalchemy import Connection, Engine, func, make_url, select, text

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.models.tables.partition import Partition
from seqproc.worker.ops.inspect import check_invariants, product_state
from seqproc.worker.ownership.partitions import claim, session_name
from tests.conftest import wait_for
from tests.faults.matrix import doubled_in_tables, report, units_doubled

pytestmark = pytest.mark.services

LEASE_S = 3.0


def owners(engine: Engine, pids: dict[int, str]) -> Counter[str]:
    """How many partitions each worker (by pid) holds according to the partition table."""
    with engine.connect() as conn:
        rows = conn.execute(select(Partition.owner)).scalars().all()
    return Counter(name for owner in rows for pid, name in pids.items() if owner and f"/{pid}/" in owner)


def epochs(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return {int(p): int(e) for p, e in conn.execute(select(Partition.partition, Partition.epoch))}


class Sequences:
    """Per product (one unit in stock): reserve it, release it, reserve again... from 4 threads. Each reserve
    succeeds only if the release before it was applied first, each release only after its reserve: any reordering
    of a product's events shows as a rejection."""

    def __init__(self, products: list[int]) -> None:
        self.products = products
        self.receipts: list[producer.Receipt] = []
        #: Besides, each thread restocks a product of its own one unit at a time (fresh keys): the units received
        #: against ``restocks`` count what was lost or doubled, independently of the ledger.
        self.restocked = [100_000 + products[0] + i for i in range(4)]
        self.sent_units = [0] * 4
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, args=(i, products[i::4])) for i in range(4)]

    def _send(self, thread: int, chunk: list[int]) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            for product in chunk:
                self.receipts.append(producer.reserve(product, 1, reservation_id=f"{product}-{n}"))
                self.receipts.append(producer.release(product, f"{product}-{n}"))
            self.receipts.append(producer.restock(self.restocked[thread], 1))
            self.sent_units[thread] += 1
            time.sleep(0.01)

    @property
    def restocks(self) -> int:
        return sum(self.sent_units)

    def received(self, conn: Connection) -> int:
        """Units received by the restocked products (compare with :attr:`restocks`)."""
        return sum(product_state(conn, product)["total_received"] for product in self.restocked)

    def __enter__(self) -> Sequences:
        for product in self.products:
            assert producer.restock(product, 1).wait(30).status == "applied"
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def check(self, engine: Engine) -> list[producer.Outcome]:
        """Every step applied in order; every unit back on the shelf. Returns the outcomes."""
        outcomes = producer.wait_all(self.receipts, timeout_s=60)
        assert Counter(o.effective.status for o in outcomes) == {"applied": len(outcomes)}
        assert not [o for o in outcomes if o.effective.reason]  # no cancelled, no insufficient_stock: order held
        with engine.connect() as conn:
            for product in self.products:
                state = product_state(conn, product)
                assert (state["available"], state["reserved"], state["total_received"]) == (1, 0, 1)
            assert self.received(conn) == self.restocks  # each unit restocked received once
            assert check_invariants(conn).ok
        return outcomes


#: Long enough that a takeover by lease expiry could not pass for a hand-back.
HAND_BACK_LEASE_S = 12.0


def test_auto_workers_share_rebalance_and_hand_back(clean: Settings, start_worker, engine: Engine) -> None:
    settings = clean.model_copy(update={"lease_s": HAND_BACK_LEASE_S})
    a = start_worker(settings, "auto")
    pids = {a.pid: "a"}
    wait_for(lambda: owners(engine, pids)["a"] == 16, 15, "the first worker to take all 16 partitions")
    # Per-product sequences keep flowing while partitions move to the joining worker and back.
    with Sequences(list(range(200, 240))) as traffic:
        b = start_worker(settings, "auto")
        pids[b.pid] = "b"
        wait_for(lambda: owners(engine, pids) == {"a": 8, "b": 8}, 30, "an 8/8 split")
        receipts = [producer.like(article, 1) for article in range(1, 41)]  # spread over the partitions
        assert {o.status for o in producer.wait_all(receipts, timeout_s=30)} == {"applied"}
        b.stop()  # graceful: hands its partitions back at once
        stopped_at = time.monotonic()
        wait_for(lambda: owners(engine, pids)["a"] == 16, 30, "the remaining worker to take all 16 back")
        # Sooner than one lease time: released, not left to expire.
        assert time.monotonic() - stopped_at < HAND_BACK_LEASE_S
        time.sleep(0.5)
    later = [producer.like(article, 2) for article in range(1, 41)]
    assert {o.status for o in producer.wait_all(later, timeout_s=30)} == {"applied"}
    assert len(traffic.check(engine)) > 200


def test_a_worker_paused_past_its_lease_is_fenced_and_nothing_is_doubled_or_reordered(
    clean: Settings, start_worker, engine: Engine
) -> None:
    settings = clean.model_copy(update={"lease_s": LEASE_S})
    a = start_worker(settings, "auto")
    b = start_worker(settings, "auto")
    pids = {a.pid: "a", b.pid: "b"}
    wait_for(lambda: owners(engine, pids) == {"a": 8, "b": 8}, 30, "an 8/8 split")
    with engine.connect() as conn:
        b_partitions = [
            int(p) for p, owner in conn.execute(select(Partition.partition, Partition.owner)) if f"/{b.pid}/" in owner
        ]
    epochs_before = epochs(engine)

    traffic = Sequences(list(range(100, 140)))  # 40 products over the 16 partitions: both workers hold some
    with traffic:
        time.sleep(1.0)
        try:
            b.signal(signal.SIGSTOP)  # paused with batches in hand, maybe mid-transaction, past its lease
            wait_for(
                lambda: owners(engine, pids)["a"] == 16, 30, "the other worker to take over the paused one's share"
            )
            time.sleep(1.0)
        finally:
            b.signal(signal.SIGCONT)  # it wakes up believing it still owns 8 partitions
        time.sleep(2.0)

    outcomes = producer.wait_all(traffic.receipts, timeout_s=60)
    with engine.connect() as conn:
        ledger_rows = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() - len(traffic.products)
        received = traffic.received(conn)
        doubled = units_doubled(received, traffic.restocks) + doubled_in_tables(conn)
    report(
        "worker SIGSTOP past its lease, then SIGCONT (auto partitions)",
        injected=1,
        sent=len(outcomes),
        lost=max(0, len(outcomes) - ledger_rows) + max(0, traffic.restocks - received),
        doubled=doubled,
        out_of_order=sum(1 for o in outcomes if o.effective.reason in ("cancelled", "insufficient_stock")),
    )
    assert len(outcomes) > 500
    traffic.check(engine)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == len(outcomes) + 40
    assert b.process.poll() is None  # the fenced worker is alive: it lost partitions, not its life
    # The takeover raised the epoch of each partition the paused worker held (read from the partition table). That
    # a worker woken with a batch in hand cannot commit it is shown apart, from the ledger: tests/faults/test_fence.py.
    after = epochs(engine)
    assert all(after[p] > epochs_before[p] for p in b_partitions), (b_partitions, epochs_before, after)


def test_a_takeover_ends_the_session_of_an_owner_stopped_mid_pipeline(clean: Settings, engine: Engine) -> None:
    """SIGSTOP can leave a worker's session with statements sent but no Sync: PostgreSQL keeps it ``active`` in
    ``ClientRead`` with its row locks, and neither idle_in_transaction_session_timeout nor statement_timeout ends
    it. The next owner, after a lock timeout, ends that session (and only that one) and completes its claim."""
    old, new = "seqproc-p@old-host/101/aaaa1111", "seqproc-p@new-host/202/bbbb2222"
    partition = 5
    before = claim(engine, [partition], owner=old, total=clean.partitions)[partition]
    dsn = make_url(clean.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    stopped = psycopg.connect(
        dsn, application_name=session_name(old), options="-c idle_in_transaction_session_timeout=300"
    )
    bystander = psycopg.connect(dsn, application_name="someone else")
    # The previous owner's other session, in a transaction of its own that holds no partition row: left alone too.
    sibling = psycopg.connect(dsn, application_name=session_name(old))
    try:
        bystander.execute("SELECT 1")  # inside a transaction too, but not the previous owner's: left alone
        sibling.execute("SELECT 1")
        stopped.execute("SELECT 1")  # BEGIN
        pg = stopped.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(b"UPDATE partition SET applied = applied WHERE partition = %d" % partition, None)
        pg.flush()  # the fence statement sent; the process stops before its Sync

        def state() -> tuple[str, str] | None:
            with engine.connect() as conn:
                return conn.execute(
                    text("SELECT state, wait_event FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pg.backend_pid},
                ).one_or_none()  # type: ignore[return-value]

        wait_for(lambda: state() == ("active", "ClientRead"), 10, "the old session to hold the row mid-pipeline")
        time.sleep(0.6)  # twice its idle-in-transaction timeout: PostgreSQL did not end it
        assert state() == ("active", "ClientRead")

        started = time.monotonic()
        after = claim(engine, [partition], owner=new, total=clean.partitions, lock_timeout_s=0.5)[partition]
        assert after == before + 1
        assert time.monotonic() - started < 5
        assert state() is None  # ended
        assert bystander.execute("SELECT 2").fetchone() == (2,)  # the bystander's transaction goes on
        assert sibling.execute("SELECT 3").fetchone() == (3,)  # and so does the sibling's: only the row's holder ended
        with engine.connect() as conn:
            assert conn.execute(select(Partition.owner).where(Partition.partition == partition)).scalar_one() == new
    finally:
        bystander.close()
        sibling.close()
        stopped.close()
