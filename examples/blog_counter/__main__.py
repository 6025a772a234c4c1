"""``python -m examples.blog_counter``: create ``blog_post`` and a post, send likes (one retried), an unlike and a
like of a post that does not exist, then print the outcomes and the post's row.

A worker that knows the domain must run: ``SEQPROC_DOMAINS=examples.blog_counter.blog python -m seqproc worker``.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

import seqproc
from examples.blog_counter.blog import Like, Unlike, create_post, create_table
from seqproc.models.settings import get_settings


def main() -> None:
    engine = create_engine(get_settings().database_url)  # the database the workers write
    with engine.begin() as conn:
        create_table(conn)
        post_id = create_post(conn, "Hello, hot rows")
    receipts = [seqproc.send(Like(post_id=post_id)) for _ in range(3)]
    receipts.append(seqproc.send(Like(post_id=post_id), idempotency_key="req-1"))
    receipts.append(seqproc.send(Like(post_id=post_id), idempotency_key="req-1"))  # a retry: a duplicate
    receipts.append(seqproc.send(Unlike(post_id=post_id)))
    receipts.append(seqproc.send(Like(post_id=10**12)))  # no such post: rejected
    for receipt, outcome in zip(receipts, seqproc.wait_all(receipts, timeout_s=30), strict=True):
        print(receipt.event_type, outcome.status, outcome.reason or "-")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, title, like_count FROM blog_post WHERE id = :id"), {"id": post_id}).one()
    print(f"blog_post {row.id} {row.title!r}: like_count {row.like_count}")  # 3 + 1 - 1 = 3
    engine.dispose()


if __name__ == "__main__":
    main()
