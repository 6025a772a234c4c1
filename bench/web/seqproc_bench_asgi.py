"""The ASGI application of ``seqproc bench --server uvicorn``: FastAPI, with ``seqproc.aio``. uvicorn starts its
worker processes, each imports this module and connects in the lifespan: one async psycopg connection, and its event
loop's seqproc publisher. The endpoints are those of ``seqproc_bench_wsgi.py``; the process's one connection serves
one transaction at a time (a lock), as a per-process connection does in the WSGI app.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from seqproc_bench_app import (
    ATOMIC_INCREMENT,
    ATOMIC_INSERT,
    COUNTS_DIR_ENV,
    AsyncBrokerFloor,
    Counters,
    libpq_urls,
)

import seqproc.aio
from seqproc.producer.aio import publisher as aio_publisher
from seqproc.producer.aio.publish import AsyncPublisher
from seqproc.producer.api import current_settings

BODY = "ok"


@dataclass
class Process:
    """This worker process's connections and counters."""

    db: psycopg.AsyncConnection[Any]
    db_lock: asyncio.Lock
    outbox_db: psycopg.AsyncConnection[Any]
    outbox_lock: asyncio.Lock
    publisher: AsyncPublisher
    counters: Counters
    #: Opened by the first ``/broker`` request (the floor needs a plain redis:// broker; the others do not).
    floor: AsyncBrokerFloor | None = None
    floor_lock: asyncio.Lock | None = None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    database, outbox = libpq_urls(current_settings())
    db = await psycopg.AsyncConnection.connect(database, autocommit=True)
    outbox_db = db if outbox == database else await psycopg.AsyncConnection.connect(outbox, autocommit=True)
    lock = asyncio.Lock()
    app.state.process = Process(
        db=db,
        db_lock=lock,
        outbox_db=outbox_db,
        outbox_lock=lock if outbox_db is db else asyncio.Lock(),
        publisher=await aio_publisher(),
        counters=Counters(os.environ[COUNTS_DIR_ENV]),
    )
    yield
    if app.state.process.floor is not None:
        await app.state.process.floor.close()
    await seqproc.aio.aclose()
    for conn in {db, outbox_db}:
        await conn.close()


app = FastAPI(title="seqproc bench --server uvicorn", lifespan=lifespan)


def process() -> Process:
    state: Process = app.state.process
    return state


@app.post("/noop", response_class=PlainTextResponse)
async def noop() -> str:
    process().counters.accept()
    return BODY


@app.post("/atomic", response_class=PlainTextResponse)
async def atomic(article: int, user: int) -> str:
    p = process()
    async with p.db_lock, p.db.transaction():
        if (await p.db.execute(ATOMIC_INSERT, (article, user))).rowcount:
            await p.db.execute(ATOMIC_INCREMENT, (article,))
    p.counters.accept()
    return BODY


@app.post("/seqproc", response_class=PlainTextResponse, status_code=202)
async def like(article: int, user: int) -> str:
    p = process()
    await seqproc.aio.like(article, user)
    p.counters.accept(messages=p.publisher.sent_messages, events=p.publisher.sent_events)
    return BODY


@app.post("/outbox", response_class=PlainTextResponse, status_code=202)
async def outbox(article: int, user: int) -> str:
    p = process()
    async with p.outbox_lock, p.outbox_db.transaction():  # the request's transaction: sent iff it commits
        await seqproc.aio.outbox.like(p.outbox_db, article, user)
    p.counters.accept()
    return BODY


@app.post("/broker", response_class=PlainTextResponse, status_code=202)
async def broker(article: int, user: int) -> str:
    """The floor of any broker-backed 202 (``seqproc_bench_app.AsyncBrokerFloor``)."""
    p = process()
    if p.floor is None:
        if p.floor_lock is None:
            p.floor_lock = asyncio.Lock()
        async with p.floor_lock:
            if p.floor is None:
                p.floor = await AsyncBrokerFloor.open(current_settings())
    await p.floor.push()
    p.counters.accept()
    return BODY
