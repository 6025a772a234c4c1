"""Domains: the events of an entity, and how a batch of them is applied (``seqproc.Domain``).

    wallet = seqproc.Domain("wallet", key="account_id")     # entity key "wallet:<account_id>"

    @wallet.event("deposit")
    class Deposit(seqproc.EventModel):
        account_id: int
        amount: int

    @wallet.load                 # once per batch: {key: state} for the keys the batch touches
    def load(conn, keys): ...
    @wallet.apply                # per event, in order, in memory: Applied() or Rejected("reason")
    def apply(state, event): ...
    @wallet.save                 # once per batch: the states that an applied event touched
    def save(conn, changed): ...

The framework does the rest for every domain: routing (``crc32(entity key)``), the idempotency ledger, batching,
fencing, outcomes, duplicates, dead letters, parking, replay, metrics, status and logs. The built-in domains
(``seqproc.domains.likes``, ``.stock``, ``.balance``) are written on this API, and registered by seqproc's own import
(this module imports none of them). Producers and workers load the modules named in ``SEQPROC_DOMAINS``
(:func:`load_domains`), so that both know every event type.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from seqproc.models.errors import ConfigError, InvalidEvent, SeqprocError
from seqproc.models.fields import MAX_REASON_LENGTH, EventId, LedgerKey, NotifyOn, Stamp, Topic

#: Fields every event carries on the wire, filled in by the producer: not for a domain's own fields.
RESERVED_FIELDS = ("type", "key", "id", "stamp", "notify", "notify_on")
#: A type name on the wire is at most this long (the ledger's ``event_type`` column).
MAX_TYPE_LENGTH = 64


class DomainError(SeqprocError):
    """A domain is declared wrongly (a field, a name, a hook): raised where it is declared, at import."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply`` returns for an event it applied; ``reason`` may say what it found (``"already_liked"``)."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """What ``apply`` returns for an event it refused, with the reason the caller reads (``"insufficient_funds"``).

    A refused event changes nothing, so its key is not saved for it; ``changed=True`` says that this refusal did
    change the state and must be saved with it (a refused reservation that a later release must find)."""

    reason: str
    changed: bool = False


class EventModel(BaseModel):
    """Base of every event schema. Declare only the domain's own fields; ``type``, ``key`` (idempotency key), ``id``
    and ``stamp`` are filled in when the event is sent. A bad value raises :class:`InvalidEvent` naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = ""
    #: Idempotency key: the ledger applies each key once (the event's own id when the caller gives none).
    key: LedgerKey | None = None
    #: Unique per event: its outcome is reported under it.
    id: EventId | None = None
    #: Ordering stamp from the producer's clock (nanoseconds, strictly increasing per producer process).
    stamp: Stamp | None = None
    #: The topic the worker publishes this event's outcome to after its commit (``seqproc.notifications``). Left
    #: out of the wire form when None, so that events without it read as they did.
    notify: Topic | None = Field(default=None, exclude_if=lambda value: value is None)
    #: ``"rejected"``: publish only a rejection or a dead letter; None: every outcome.
    notify_on: NotifyOn | None = Field(default=None, exclude_if=lambda value: value is None)

    #: Set on each registered event class by :meth:`Domain.event`.
    domain: ClassVar[Domain]
    #: The type's name as its domain declared it (``"deposit"``); ``type`` is its name on the wire.
    event_name: ClassVar[str]
    #: False for control events the framework or a job sends (``reconcile``): not for application code.
    public: ClassVar[bool] = True

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            from seqproc.models.events import invalid_event_from

            raise invalid_event_from(error) from None

    @property
    def entity_key(self) -> str:
        """``<entity>:<key field's value>``: what is routed, ordered, parked and replayed together."""
        domain = type(self).domain
        return f"{domain.entity}:{getattr(self, domain.key)}"

    def derived_key(self) -> str | None:
        """The idempotency key this event must have, when it follows from its fields (a reservation's
        ``reserve:<id>``); None: the caller's key, or the event's own id."""
        return None

    @property
    def ledger_key(self) -> str:
        """The key the ledger applies once: the caller's key scoped by the event type, so that one request id used
        for two kinds of events names two events."""
        return f"{self.type}:{self.key}"


State = Any
LoadHook = Callable[..., Mapping[Any, State]]
ApplyHook = Callable[[State, Any], "Applied | Rejected"]
SaveHook = Callable[[Any, dict[Any, State]], None]


class Domain:
    """An entity's events and rules. See the module docstring; names are checked where they are declared."""

    def __init__(self, name: str, *, key: str, entity: str | None = None, type_prefix: str | None = None) -> None:
        if not name.isidentifier():
            raise DomainError(f"Domain name: must be an identifier (got {name!r})")
        self.name = name
        #: The field of every event of this domain that names its entity (``account_id``).
        self.key = key
        #: The entity keys' prefix (``wallet`` -> ``wallet:7``); the domain's name by default.
        self.entity = entity or name
        if not self.entity.replace("_", "").replace("-", "").isalnum():
            raise DomainError(f"Domain entity: must be letters, digits, - or _ (got {self.entity!r})")
        #: Wire type names are ``<prefix><event name>``: ``wallet.deposit`` by default, so that two domains can
        #: both have a ``deposit``. The built-in likes and stock keep their historic bare names (prefix "").
        self.type_prefix = f"{name}." if type_prefix is None else type_prefix
        self.events: dict[str, type[EventModel]] = {}
        self._load: LoadHook | None = None
        self._load_takes_events = False
        self._apply: ApplyHook | None = None
        self._save: SaveHook | None = None
        #: Built-in domains only: ``prefetch(conn, keys, events)`` issues the load's statements and returns the
        #: function that reads their answers, so that the worker sends them with the ledger's claim in one round trip
        #: (a PostgreSQL pipeline); their saves join the framework's writes likewise. None: the plain hooks.
        self.prefetch: Callable[[Any, Sequence[Any], Sequence[EventModel]], Callable[[], Mapping[Any, State]]] | None
        self.prefetch = None
        #: Built-in domains only (with ``prefetch``): ``conflict(state, event, first)`` for an event whose idempotency
        #: key was applied before (``first``: the key's first event when it is in the same batch, else None;
        #: ``state``: the event's key's state, None if not loaded). A :class:`Rejected` when the event is not a copy
        #: of that one (a key that follows from fields, reused with other fields: a reservation id on another
        #: product), None for a true duplicate. The key's ledger row stays the first event's.
        self.conflict: Callable[[State, EventModel, EventModel | None], Rejected | None] | None = None

    def __repr__(self) -> str:
        return f"Domain({self.name!r}, key={self.key!r}, events={sorted(self.events)})"

    # -- declaring ---------------------------------------------------------------------------------------------
    def event(self, name: str, *, public: bool = True) -> Callable[[type[EventModel]], type[EventModel]]:
        """Register an event schema under ``name``; the class returned is the registered one (with its ``type``)."""

        def register(model: type[EventModel]) -> type[EventModel]:
            if not (isinstance(model, type) and issubclass(model, EventModel)):
                raise DomainError(f"{self.name}.event({name!r}): decorate a subclass of seqproc.EventModel")
            wire = f"{self.type_prefix}{name}"
            if not name or len(wire) > MAX_TYPE_LENGTH or not all(c.isalnum() or c in "_-." for c in wire):
                raise DomainError(
                    f"{self.name}.event({name!r}): the type name must be letters, digits, _ - or ., "
                    f"at most {MAX_TYPE_LENGTH} characters with its domain prefix"
                )
            own = [f for f in model.model_fields if f not in RESERVED_FIELDS]
            reserved = [f for f in model.__annotations__ if f in RESERVED_FIELDS]
            if reserved:
                raise DomainError(f"{model.__name__}.{reserved[0]}: {', '.join(RESERVED_FIELDS)} are seqproc's fields")
            if self.key not in own:
                raise DomainError(f"{model.__name__}: every {self.name} event needs the key field {self.key!r}")
            literal: Any = Literal[wire]
            registered = create_model(
                model.__name__,
                __base__=model,
                __module__=model.__module__,
                type=(literal, wire),
            )
            registered.__qualname__ = model.__qualname__
            registered.__doc__ = model.__doc__
            # Validation (the worker's, the producer's fast path) builds instances in pydantic's core without
            # EventModel.__init__ (three times faster); a caller's constructor call still goes through it.
            registered.__pydantic_custom_init__ = False
            registered.model_rebuild(force=True)
            registered.domain = self
            registered.event_name = name
            registered.public = public
            _REGISTRY.add(wire, registered)
            self.events[name] = registered
            return registered

        return register

    def load(self, hook: LoadHook) -> LoadHook:
        """``load(conn, keys)`` (or ``load(conn, keys, events)``): the state of each key, once per batch."""
        parameters = len(inspect.signature(hook).parameters)
        if parameters not in (2, 3):
            raise DomainError(f"{self.name}.load: takes (conn, keys) or (conn, keys, events)")
        self._load, self._load_takes_events = hook, parameters == 3
        return hook

    def apply(self, hook: ApplyHook) -> ApplyHook:
        """``apply(state, event)``: one event, in order, in memory; returns :class:`Applied` or :class:`Rejected`."""
        self._apply = hook
        return hook

    def save(self, hook: SaveHook) -> SaveHook:
        """``save(conn, changed)``: the states an applied event touched, once per batch, in the worker's
        transaction."""
        self._save = hook
        return hook

    # -- used by the worker ------------------------------------------------------------------------------------
    @property
    def pipelined(self) -> bool:
        return self.prefetch is not None

    def start_loading(
        self, conn: Any, keys: Sequence[Any], events: Sequence[EventModel]
    ) -> Callable[[], dict[Any, State]]:
        """Issue the load of ``keys`` (a prefetching domain's statements are only sent); the function returned
        gives the states."""
        if self.prefetch is None:
            states = self.load_states(conn, keys, events)
            return lambda: states
        finish = self.prefetch(conn, keys, events)
        return lambda: self._checked(keys, finish())

    def load_states(self, conn: Any, keys: Sequence[Any], events: Sequence[EventModel]) -> dict[Any, State]:
        if self._load is None:
            raise DomainError(f"domain {self.name!r} has no @{self.name}.load")
        states = self._load(conn, keys, events) if self._load_takes_events else self._load(conn, keys)
        return self._checked(keys, states)

    def _checked(self, keys: Sequence[Any], states: Mapping[Any, State]) -> dict[Any, State]:
        missing = [key for key in keys if key not in states]
        if missing:
            raise DomainError(
                f"{self.name}.load returned no state for {self.key}={missing[0]!r}: return one for every key given"
            )
        return dict(states)

    def apply_event(self, state: State, event: EventModel) -> Applied | Rejected:
        if self._apply is None:
            raise DomainError(f"domain {self.name!r} has no @{self.name}.apply")
        decision = self._apply(state, event)
        kind = type(decision)
        if kind is not Applied and kind is not Rejected and not isinstance(decision, Applied | Rejected):
            raise DomainError(
                f"{self.name}.apply returned {decision!r} for a {event.type} event: return seqproc.Applied() or "
                "seqproc.Rejected(reason)"
            )
        reason = decision.reason
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH):
            # Checked here, where the rule is named: the ledger would refuse it at the end of the transaction.
            raise DomainError(
                f"{self.name}.apply: a reason is a short identifier, a string of at most {MAX_REASON_LENGTH} "
                f"characters (got {reason!r:.100})"
            )
        return decision

    def save_states(self, conn: Any, changed: dict[Any, State]) -> None:
        if changed:
            if self._save is None:
                raise DomainError(f"domain {self.name!r} has no @{self.name}.save")
            self._save(conn, changed)


@dataclass(frozen=True)
class BatchContext:
    """What the worker knows of the batch being applied, for hooks that need it (:func:`batch_context`)."""

    #: ``SEQPROC_RESERVATION_TTL_S`` of the worker (the stock domain's reservations expire after it).
    reservation_ttl_s: int | None = None


_BATCH: ContextVar[BatchContext | None] = ContextVar("seqproc_batch", default=None)
_NO_BATCH = BatchContext()


def batch_context() -> BatchContext:
    """The batch being applied (set by the worker around a batch; defaults outside one)."""
    return _BATCH.get() or _NO_BATCH


def set_batch_context(context: BatchContext) -> Any:
    return _BATCH.set(context)


def reset_batch_context(token: Any) -> None:
    _BATCH.reset(token)


class _Registry:
    """Every event type known to this process, by wire name. Built-in domains are always in it; the modules named
    in ``SEQPROC_DOMAINS`` add theirs when loaded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.models: dict[str, type[EventModel]] = {}
        #: Raised with each registration: caches built over the registry (a validator) know to rebuild.
        self.version = 0

    def add(self, wire: str, model: type[EventModel]) -> None:
        with self._lock:
            known = self.models.get(wire)
            if known is not None and (known.__module__, known.__qualname__) != (model.__module__, model.__qualname__):
                raise DomainError(
                    f"event type {wire!r} is declared twice: by {known.__module__}.{known.__qualname__} and "
                    f"{model.__module__}.{model.__qualname__}"
                )
            self.models[wire] = model
            self.version += 1


_REGISTRY = _Registry()
_LOADED: set[str] = set()


def load_domains(modules: Iterable[str] = ()) -> None:
    """Import ``modules`` (``SEQPROC_DOMAINS``); each registers its events as it declares them. A module that cannot
    be imported is a :class:`ConfigError` naming it. The built-in domains are registered by seqproc's own import
    (``seqproc/__init__.py``): this module, the contract, imports none of them."""
    for name in modules:
        if name in _LOADED:
            continue
        try:
            import_from_cwd(name)
        except ImportError as error:
            raise ConfigError(f"SEQPROC_DOMAINS: cannot import {name!r}: {error}") from error
        _LOADED.add(name)


def import_from_cwd(name: str) -> ModuleType:
    """Import ``name`` with the working folder on ``sys.path`` while it imports, as ``celery -A`` imports an app
    (celery's ``import_from_cwd``): ``python -m seqproc`` finds the modules of the folder it runs in, and so must the
    ``seqproc`` console script, which does not put that folder on the path."""
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # the folder was removed under the process
        cwd = ""
    added = bool(cwd) and cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def event_types() -> dict[str, type[EventModel]]:
    """Every registered event schema, by wire type name, in the order registered (the built-in domains first)."""
    return _REGISTRY.models


def registry_version() -> int:
    return _REGISTRY.version


def model_of(event_type: str) -> type[EventModel]:
    """The schema of ``event_type``; :class:`InvalidEvent` on the ``type`` field for an unknown one."""
    models = _REGISTRY.models
    model = models.get(event_type)
    if model is None:
        known = ", ".join(name for name, m in models.items() if m.public)
        raise InvalidEvent("type", f"must be one of {known} (got {event_type!r})")
    return model


def domains() -> list[Domain]:
    """Every registered domain, in registration order."""
    return list({id(m.domain): m.domain for m in event_types().values()}.values())


__all__ = [
    "Applied",
    "BatchContext",
    "Domain",
    "DomainError",
    "EventModel",
    "Rejected",
    "batch_context",
    "domains",
    "event_types",
    "load_domains",
    "model_of",
]
