"""The wire in one place: every Lua script seqproc runs lives in ``models/scripts.py``, each under its own name."""

from __future__ import annotations

import re
from pathlib import Path

from seqproc.models import scripts

ROOT = Path(__file__).resolve().parents[2]
CODE = ("models", "producer", "worker", "seqproc")


def test_no_module_but_models_scripts_holds_a_lua_script() -> None:
    holders = sorted(
        str(path.relative_to(ROOT))
        for folder in CODE
        for path in (ROOT / folder).rglob("*.py")
        if "redis.call(" in path.read_text(encoding="utf-8") and not path.is_symlink()
    )
    assert holders == ["models/scripts.py"], holders


def test_every_script_has_a_distinct_name_and_body() -> None:
    found = {
        name: value
        for name, value in vars(scripts).items()
        if name.isupper() and isinstance(value, str) and "redis.call(" in value
    }
    assert len(found) >= 8, sorted(found)
    assert len(set(found.values())) == len(found), "two names hold the same script"
    source = (ROOT / "models" / "scripts.py").read_text(encoding="utf-8")
    for name in found:
        # each is introduced by a comment saying what it takes and returns
        assert re.search(rf"^#: .*\n(?:#:.*\n)*{name} = ", source, re.M), f"{name} has no comment above it"
