"""A blog's ``like_count``, kept by seqproc in the blog's own table: ``blog_post(id, title, like_count)``.

The application owns ``blog_post`` (it creates posts and edits their titles); the ``post_likes`` domain owns only
its ``like_count`` column. Its ``save`` runs in the worker's transaction, the one that also records each event's
idempotency key in seqproc's ledger, so a like counts exactly once: a redelivered or retried event is a duplicate
and never reaches ``save``. The update is relative (``like_count = like_count + :delta``) and touches no other
column, so the application may edit a post while its likes are applied.

    SEQPROC_DOMAINS=examples.blog_counter.blog python -m seqproc worker &
    python -m examples.blog_counter          # creates the table and a post, sends likes, prints the count

This domain counts like events (a request id makes a retry a duplicate); who liked what is the built-in likes
domain's job (``seqproc.like``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import PositiveInt
from sqlalchemy import bindparam, text

import seqproc

#: The application's table (its migrations would create it). The CHECK is the invariant, kept by the database too.
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS blog_post (
    id bigserial PRIMARY KEY,
    title text NOT NULL,
    like_count bigint NOT NULL DEFAULT 0 CHECK (like_count >= 0)
)
"""

post_likes = seqproc.Domain("post_likes", key="post_id")  # entity keys "post_likes:<id>", types "post_likes.like"


@post_likes.event("like")
class Like(seqproc.EventModel):
    post_id: PositiveInt


@post_likes.event("unlike")
class Unlike(seqproc.EventModel):
    post_id: PositiveInt


@dataclass
class PostLikes:
    like_count: int  # as loaded, then as the batch's events leave it
    delta: int = 0  # what the batch adds: save writes only this


SELECT_COUNTS = text("SELECT id, like_count FROM blog_post WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
ADD_LIKES = text("UPDATE blog_post SET like_count = like_count + :delta WHERE id = :id")


@post_likes.load
def load(conn: Any, keys: list[int]) -> dict[int, PostLikes | None]:
    found = dict(conn.execute(SELECT_COUNTS, {"ids": keys}).all())
    return {post_id: PostLikes(found[post_id]) if post_id in found else None for post_id in keys}


@post_likes.apply
def apply(post: PostLikes | None, event: Like | Unlike) -> seqproc.Applied | seqproc.Rejected:
    if post is None:
        return seqproc.Rejected("unknown_post")
    step = 1 if isinstance(event, Like) else -1
    if post.like_count + step < 0:
        return seqproc.Rejected("no_likes")
    post.like_count += step
    post.delta += step
    return seqproc.Applied()


@post_likes.save
def save(conn: Any, changed: dict[int, PostLikes]) -> None:
    rows = [{"id": post_id, "delta": post.delta} for post_id, post in changed.items() if post.delta]
    if rows:
        conn.execute(ADD_LIKES, rows)


def create_table(conn: Any) -> None:
    """What the application's migration would do."""
    conn.execute(text(CREATE_TABLE))


def create_post(conn: Any, title: str) -> int:
    """The application's own write: a new post, no likes yet."""
    return int(
        conn.execute(text("INSERT INTO blog_post (title) VALUES (:title) RETURNING id"), {"title": title}).scalar_one()
    )
