"""How a front module makes its functions of the calls (:mod:`seqproc.producer.calls`).

    _front = Front(Calls(BrokerSender()), __name__, option=TIMEOUT_S, sent="...")
    like = _front.export(Calls.like)          # like(article_id, user_id, *, idempotency_key=None, timeout_s=None)

    _outbox = PerConnection(OutboxSender, __name__, sent="...")
    like = _outbox.export(Calls.like)         # like(conn, article_id, user_id, *, idempotency_key=None)

Each function is made once, at import, with its front's own signature: the call's parameters as :class:`Calls`
declares them, then the front's keyword-only option, or the connection first. It is a plain function (an ``async
def`` for an asyncio front), so ``help()``, ``inspect.signature`` and a wrong argument's ``TypeError`` are what
they would be for one written by hand, and an asyncio call validates when it is awaited, as before. Its type, for
mypy and editors, is the method's: bound, or with the connection first (``Concatenate``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast

from seqproc.producer.calls import Calls, Many, One, Sender, T, U
from seqproc.producer.receipt import Receipt

P = ParamSpec("P")
R = TypeVar("R")

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
#: The broker's option: how long a call may try to reach it.
TIMEOUT_S = inspect.Parameter("timeout_s", _KEYWORD, default=None, annotation=float | None)
#: An outbox call's first parameter.
CONN = inspect.Parameter("conn", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Any)
#: What the functions return (the methods' type variables, resolved: an asyncio front's return the same, awaited).
_RETURNS: dict[object, object] = {One: Receipt, Many: list[Receipt]}


class Front(Generic[T, U, One, Many]):
    """The calls over one sender for the whole process (the broker's, Django's): ``calls.like`` exported as
    ``like(article_id, user_id, *, idempotency_key=None, <option>=<default>)``."""

    def __init__(
        self,
        calls: Calls[T, U, One, Many],
        module: str,
        *,
        option: inspect.Parameter,
        sent: str,
        asynchronous: bool = False,
    ) -> None:
        self.calls = calls
        self.module = module
        self.option = option
        self.sent = sent
        self.asynchronous = asynchronous

    def export(self, method: Callable[Concatenate[Calls[T, U, One, Many], P], R]) -> Callable[P, R]:
        """The front's function of ``method`` (a method of :class:`Calls`)."""
        function = make_function(method, self.calls, self.module, self.sent, self.asynchronous, last=self.option)
        return cast("Callable[P, R]", function)


class PerConnection(Generic[T, U, One, Many]):
    """The calls over a sender made for each call of the caller's connection (the outbox's):
    ``calls.like`` exported as ``like(conn, article_id, user_id, *, idempotency_key=None)``."""

    def __init__(
        self, sender: Callable[[Any], Sender[T, U, One, Many]], module: str, *, sent: str, asynchronous: bool = False
    ) -> None:
        self.module = module
        self.sent = sent
        self.asynchronous = asynchronous

        def calls(conn: Any) -> Calls[T, U, One, Many]:
            return Calls(sender(conn))

        self.calls = calls

    def export(self, method: Callable[Concatenate[Calls[T, U, One, Many], P], R]) -> Callable[Concatenate[Any, P], R]:
        """The front's function of ``method`` (a method of :class:`Calls`), taking the connection first."""
        function = make_function(method, self.calls, self.module, self.sent, self.asynchronous, first=CONN)
        return cast("Callable[Concatenate[Any, P], R]", function)


def make_function(
    method: Callable[..., Any],
    target: object,
    module: str,
    sent: str,
    asynchronous: bool,
    *,
    first: inspect.Parameter | None = None,
    last: inspect.Parameter | None = None,
) -> Callable[..., Any]:
    """A function ``<name>(<first>, <the method's parameters>, <last>)`` that calls ``method`` on ``target`` (on
    ``target(<first>)`` when there is a first parameter) with the method's parameters, and ``last`` as an option.

    Written out and compiled rather than a ``*args, **kwargs`` wrapper: Python itself then binds the arguments (a
    misspelt option is a ``TypeError``, as it was, not an option the sender ignores) for no more than one frame."""
    name = method.__name__
    declared = inspect.signature(method, eval_str=True)
    own = [p for p in list(declared.parameters.values())[1:] if p.kind is not p.VAR_KEYWORD]
    params = ([first] if first else []) + own + ([last] if last else [])
    head: list[str] = []
    for param in params:
        if param.kind is _KEYWORD and "*" not in head:
            head.append("*")
        head.append(param.name if param.default is param.empty else f"{param.name}=_defaults[{param.name!r}]")
    passed = [p.name if p.kind is p.POSITIONAL_OR_KEYWORD else f"{p.name}={p.name}" for p in own]
    if last is not None:
        passed.append(f"{last.name}={last.name}")
    on = f"_target({first.name})" if first else "_target"
    call = f"_method({', '.join([on, *passed])})"
    source = (
        f"async def {name}({', '.join(head)}):\n    return await {call}\n"
        if asynchronous
        else f"def {name}({', '.join(head)}):\n    return {call}\n"
    )
    namespace: dict[str, Any] = {
        "_method": method,
        "_target": target,
        "_defaults": {p.name: p.default for p in params if p.default is not p.empty},
    }
    # As dataclasses makes __init__: the source is made here of Calls' own signatures, nothing from outside.
    exec(compile(source, f"<{module}.{name}>", "exec"), namespace)  # noqa: S102
    function: Callable[..., Any] = namespace[name]
    function.__module__ = module
    function.__qualname__ = name
    function.__doc__ = f"{inspect.cleandoc(method.__doc__ or '')}\n\n{sent}"
    function.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not p.empty}
    function.__annotations__["return"] = _RETURNS[declared.return_annotation]
    return function
