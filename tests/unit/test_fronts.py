"""Every way of sending exposes the same calls, with the same parameters: they are written once
(``seqproc.producer.calls.Calls``) and each front adds only its sender's part (the connection first, ``timeout_s``
or ``using``). These tests keep the fronts from drifting apart again: a call missing from a front or from a name
list, a call written by hand in one front, a parameter that differs."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType
from typing import Any, get_type_hints

import pytest

from seqproc.producer.calls import CALLS, Calls
from seqproc.producer.receipt import Receipt

pytest.importorskip("django")

#: What each call took before the calls were written once (parameter kinds and defaults, no annotations): the
#: signatures users call, kept; plus ``notify``/``notify_on`` (issue 21), on every call of every front.
CALL_PARAMETERS = {
    "like": "(article_id, user_id, *, idempotency_key=None, notify=None, notify_on=None)",
    "unlike": "(article_id, user_id, *, idempotency_key=None, notify=None, notify_on=None)",
    "restock": "(product_id, quantity, *, idempotency_key=None, notify=None, notify_on=None)",
    "reserve": "(product_id, quantity, *, reservation_id, notify=None, notify_on=None)",
    "release": "(product_id, reservation_id, *, notify=None, notify_on=None)",
    "commit": "(product_id, reservation_id, *, notify=None, notify_on=None)",
    "send": "(event, *, idempotency_key=None, notify=None, notify_on=None)",
    "send_many": "(events, *, notify=None, notify_on=None)",
}

#: Each front module: whether its calls are coroutine functions, its own parameter (first, or keyword-only), and
#: the other functions it exports (anything else in its ``__all__`` that is a function would be a call written
#: by hand in this front only).
FRONTS: dict[str, tuple[bool, inspect.Parameter, set[str]]] = {
    "seqproc.producer.api": (
        False,
        inspect.Parameter("timeout_s", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=float | None),
        {"configure", "connect"},
    ),
    "seqproc.producer.outbox": (
        False,
        inspect.Parameter("conn", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Any),
        {"write"},
    ),
    "seqproc.producer.aio.api": (
        True,
        inspect.Parameter("timeout_s", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=float | None),
        {"aclose", "publisher", "wait", "wait_all"},
    ),
    "seqproc.producer.aio.outbox": (
        True,
        inspect.Parameter("conn", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Any),
        {"write"},
    ),
    "seqproc.contrib.django.outbox": (
        False,
        inspect.Parameter("using", inspect.Parameter.KEYWORD_ONLY, default="default", annotation=str),
        {"write"},
    ),
}

#: The public modules that hand a front's calls on, and the front they hand on.
PUBLIC = {
    "seqproc": "seqproc.producer.api",
    "seqproc.producer": "seqproc.producer.api",
    "seqproc.outbox": "seqproc.producer.outbox",
    "seqproc.aio": "seqproc.producer.aio.api",
    "seqproc.producer.aio": "seqproc.producer.aio.api",
    "seqproc.aio.outbox": "seqproc.producer.aio.outbox",
    "seqproc.contrib.django.outbox": "seqproc.contrib.django.outbox",
}


def module(name: str) -> ModuleType:
    return importlib.import_module(name)


def without(signature: inspect.Signature, own: inspect.Parameter) -> inspect.Signature:
    return signature.replace(parameters=[p for p in signature.parameters.values() if p.name != own.name])


def plain(signature: inspect.Signature) -> str:
    """The parameters' kinds, names and defaults, as a function written by hand without annotations would show."""
    return str(
        signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=inspect.Signature.empty,
        )
    )


def declared(name: str) -> inspect.Signature:
    """A call's signature as :class:`Calls` declares it, less ``self`` and the front's options."""
    signature = inspect.signature(getattr(Calls, name), eval_str=True)
    params = [p for p in list(signature.parameters.values())[1:] if p.kind is not p.VAR_KEYWORD]
    return signature.replace(parameters=params, return_annotation=inspect.Signature.empty)


def test_the_calls_are_the_ones_users_call() -> None:
    assert list(CALLS) == list(CALL_PARAMETERS)
    for name, parameters in CALL_PARAMETERS.items():
        assert plain(declared(name)) == parameters, name


@pytest.mark.parametrize("front", sorted(FRONTS))
def test_every_front_exports_every_call_and_no_call_of_its_own(front: str) -> None:
    asynchronous, _, others = FRONTS[front]
    exported = module(front).__all__
    assert set(CALLS) <= set(exported), f"{front}.__all__ lacks {sorted(set(CALLS) - set(exported))}"
    functions = {name for name in exported if inspect.isfunction(getattr(module(front), name))}
    assert functions - set(CALLS) - others == set(), f"{front} exports a function that is not one of the calls"
    for name in CALLS:
        function = getattr(module(front), name)
        assert inspect.isfunction(function), (front, name)
        assert (function.__module__, function.__name__) == (front, name)
        assert inspect.iscoroutinefunction(function) is asynchronous, (front, name)
        assert (function.__doc__ or "").startswith(inspect.cleandoc(getattr(Calls, name).__doc__))


@pytest.mark.parametrize("front", sorted(FRONTS))
def test_every_front_takes_each_call_s_parameters_and_only_its_own_besides(front: str) -> None:
    _, own, _ = FRONTS[front]
    for name in CALLS:
        function = getattr(module(front), name)
        signature = inspect.signature(function)
        params = list(signature.parameters.values())
        if own.kind is own.KEYWORD_ONLY:
            assert params[-1] == own, (front, name)  # the option comes last, keyword-only, with its default
        else:
            assert params[0] == own, (front, name)  # the connection comes first
        assert without(signature, own).replace(return_annotation=inspect.Signature.empty) == declared(name)
        assert signature.return_annotation == (list[Receipt] if name == "send_many" else Receipt)
        assert get_type_hints(function)["return"] == signature.return_annotation  # what typing tools read


@pytest.mark.parametrize(("public", "front"), sorted(PUBLIC.items()))
def test_every_public_module_hands_on_its_front_s_calls(public: str, front: str) -> None:
    assert set(CALLS) <= set(module(public).__all__), (
        f"{public}.__all__ lacks {set(CALLS) - set(module(public).__all__)}"
    )
    for name in CALLS:
        assert getattr(module(public), name) is getattr(module(front), name), (public, name)


def test_a_wrong_argument_is_refused_as_by_a_function_written_by_hand() -> None:
    import seqproc
    import seqproc.outbox

    with pytest.raises(TypeError, match=r"^like\(\) got an unexpected keyword argument 'timout_s'$"):
        seqproc.like(1, 2, timout_s=1)
    with pytest.raises(TypeError, match=r"^like\(\) got an unexpected keyword argument 'timeout_s'$"):
        seqproc.outbox.like(object(), 1, 2, timeout_s=1)  # an outbox call takes no timeout: nothing to wait for
    with pytest.raises(TypeError, match=r"^reserve\(\) missing 1 required keyword-only argument: 'reservation_id'$"):
        seqproc.reserve(1, 2)
