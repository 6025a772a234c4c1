"""The WSGI application of ``seqproc bench --server gunicorn``: a lean app, no framework, as the baselines get no
overhead they would not have in a lean application. gunicorn preloads it and forks its sync workers; each worker
connects in ``post_fork`` (``seqproc_bench_gunicorn.py``): its own psycopg connection, and ``seqproc.connect()``.

Endpoints (POST, ``?article=1&user=7``; each answers a 2-byte body):

- ``/noop``: nothing: the server's own ceiling;
- ``/atomic``: ``INSERT like; UPDATE count = count + 1`` in one transaction on the process's connection;
- ``/seqproc``: ``seqproc.like`` (202 once the broker holds the event);
- ``/outbox``: ``seqproc.outbox.like`` in a transaction on the process's connection (202 once it commits);
- ``/broker``: the floor of any broker-backed 202: one ``LPUSH`` of a message as long as seqproc's, on a plain
  socket (``BrokerFloor``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from seqproc_bench_app import (
    ATOMIC_INCREMENT,
    ATOMIC_INSERT,
    COUNTS_DIR_ENV,
    BrokerFloor,
    Counters,
    libpq_urls,
    like_of,
)

import seqproc
from seqproc.producer.api import current_settings
from seqproc.producer.publish import Publisher, publisher_for

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
BODY = b"ok"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


@dataclass
class Process:
    """A worker process's connections and counters."""

    db: psycopg.Connection[Any]
    outbox_db: psycopg.Connection[Any]
    publisher: Publisher
    counters: Counters
    #: Opened by the first ``/broker`` request (the floor needs a plain redis:// broker; the others do not).
    floor: BrokerFloor | None = None


class BenchApp:
    """Imported before the fork; each worker process connects after it (:meth:`connect`)."""

    #: This worker process's, once connected.
    process: Process

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[str], str]] = {
            "/noop": self.noop,
            "/atomic": self.atomic,
            "/seqproc": self.seqproc,
            "/outbox": self.outbox,
            "/broker": self.broker,
        }

    def connect(self) -> None:
        """In each worker, after the fork: its connections; then its counters, which tell the benchmark it is ready."""
        settings = current_settings()
        database, outbox = libpq_urls(settings)
        db = psycopg.connect(database, autocommit=True)
        outbox_db = db if outbox == database else psycopg.connect(outbox, autocommit=True)
        seqproc.connect()
        self.process = Process(db, outbox_db, publisher_for(settings), Counters(os.environ[COUNTS_DIR_ENV]))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        handler = self.routes.get(environ["PATH_INFO"])
        if handler is None:
            start_response("404 Not Found", HEADERS)
            return [BODY]
        try:
            status = handler(environ.get("QUERY_STRING", ""))
        except (KeyError, ValueError) as error:  # a malformed query: the benchmark's load never sends one
            logger.warning("bad request %s?%s: %r", environ["PATH_INFO"], environ.get("QUERY_STRING"), error)
            start_response("400 Bad Request", HEADERS)
            return [BODY]
        start_response(status, HEADERS)
        return [BODY]

    def noop(self, query: str) -> str:
        self.process.counters.accept()
        return "200 OK"

    def atomic(self, query: str) -> str:
        article, user = like_of(query)
        db = self.process.db
        with db.transaction():
            if db.execute(ATOMIC_INSERT, (article, user)).rowcount:
                db.execute(ATOMIC_INCREMENT, (article,))
        self.process.counters.accept()
        return "200 OK"

    def seqproc(self, query: str) -> str:
        article, user = like_of(query)
        seqproc.like(article, user)
        publisher = self.process.publisher
        self.process.counters.accept(messages=publisher.sent_messages, events=publisher.sent_events)
        return "202 Accepted"

    def outbox(self, query: str) -> str:
        article, user = like_of(query)
        db = self.process.outbox_db
        with db.transaction():  # the request's transaction: the event is sent iff it commits
            seqproc.outbox.like(db, article, user)
        self.process.counters.accept()
        return "202 Accepted"

    def broker(self, query: str) -> str:
        like_of(query)  # parsed as the others are
        process = self.process
        if process.floor is None:
            process.floor = BrokerFloor(current_settings())
        process.floor.push()
        process.counters.accept()
        return "202 Accepted"


app = BenchApp()
