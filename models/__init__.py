"""Tables, event schemas, settings and engines shared by ``producer`` and ``worker``."""

from models.base import Base
from models.errors import (
    ConfigError,
    InvalidEvent,
    OutcomeTimeout,
    PartitionCountMismatch,
    PartitionFenced,
    PublishError,
    SeqprocError,
)
from models.events import Commit, Event, Like, Release, Reserve, Restock, Unlike, parse_event
from models.jobs import JobRun, PartitionLag
from models.ledger import DeadLetter, LedgerEntry, ParkedKey
from models.likes import ArticleLike, ArticleLikeCount, ArticleUnlike
from models.outcomes import Outcome
from models.partition import Meta, Partition
from models.settings import Settings, get_settings, load_settings
from models.stock import ProductStock, Reservation, ReservationStatus

__all__ = [
    "ArticleLike",
    "ArticleLikeCount",
    "ArticleUnlike",
    "Base",
    "Commit",
    "ConfigError",
    "DeadLetter",
    "Event",
    "InvalidEvent",
    "JobRun",
    "LedgerEntry",
    "Like",
    "Meta",
    "Outcome",
    "OutcomeTimeout",
    "ParkedKey",
    "Partition",
    "PartitionCountMismatch",
    "PartitionFenced",
    "PartitionLag",
    "ProductStock",
    "PublishError",
    "Release",
    "Reservation",
    "ReservationStatus",
    "Reserve",
    "Restock",
    "SeqprocError",
    "Settings",
    "Unlike",
    "get_settings",
    "load_settings",
    "parse_event",
]
