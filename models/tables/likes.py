"""Likes, keyed by article: the current likes, the count that follows them, and the stamps of unlikes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.tables.base import Base, BigInt, now_column


class ArticleLike(Base):
    """One row per user who currently likes the article; ``stamp`` is the producer stamp of that like."""

    __tablename__ = "article_like"

    article_id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    stamp: Mapped[int] = mapped_column(BigInt)
    liked_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"ArticleLike(article_id={self.article_id}, user_id={self.user_id}, stamp={self.stamp})"


class ArticleUnlike(Base):
    """The stamp of a user's last unlike of an article, so that an older like delivered late cannot revive it.

    A (article, user) pair has a row here or in ``article_like``, never both: whichever holds the newest stamp.
    """

    __tablename__ = "article_unlike"

    article_id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    stamp: Mapped[int] = mapped_column(BigInt)
    unliked_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"ArticleUnlike(article_id={self.article_id}, user_id={self.user_id}, stamp={self.stamp})"


class ArticleLikeCount(Base):
    """Invariant: ``like_count`` equals the number of ``article_like`` rows of the article after every commit."""

    __tablename__ = "article_like_count"
    __table_args__ = (
        CheckConstraint("like_count >= 0", name="like_count_non_negative"),
        Index("ix_article_like_count_updated_at", "updated_at"),
    )

    article_id: Mapped[int] = mapped_column(BigInt, primary_key=True)
    like_count: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    #: Indexed: the reconcile job recounts the articles touched since its last run.
    updated_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"ArticleLikeCount(article_id={self.article_id}, like_count={self.like_count})"
