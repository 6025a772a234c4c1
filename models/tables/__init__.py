"""seqproc's tables (SQLAlchemy 2.0 declarative). Alembic (``seqproc.migrations``) creates and changes them."""

from seqproc.models.fields import ReservationStatus
from seqproc.models.tables.balance import AccountBalance
from seqproc.models.tables.base import Base
from seqproc.models.tables.jobs import JobRun, PartitionLag
from seqproc.models.tables.ledger import DeadLetter, LedgerEntry, ParkedKey
from seqproc.models.tables.likes import ArticleLike, ArticleLikeCount, ArticleUnlike
from seqproc.models.tables.partition import Meta, Partition, Worker
from seqproc.models.tables.sequence import ProducerSequence, SequenceGap
from seqproc.models.tables.stock import ProductStock, Reservation

__all__ = [
    "AccountBalance",
    "ArticleLike",
    "ArticleLikeCount",
    "ArticleUnlike",
    "Base",
    "DeadLetter",
    "JobRun",
    "LedgerEntry",
    "Meta",
    "ParkedKey",
    "Partition",
    "PartitionLag",
    "ProducerSequence",
    "ProductStock",
    "Reservation",
    "ReservationStatus",
    "SequenceGap",
    "Worker",
]
