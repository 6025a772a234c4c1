"""What imports what: a producer's import loads no table and no SQLAlchemy (``models/__init__.py`` says so), the
contract (``models/``) imports nothing of the worker nor of the built-in domains, and the two stores import only their
base, never each other."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_importing_seqproc_loads_no_table_and_no_sqlalchemy() -> None:
    code = (
        "import json, sys\n"
        "import seqproc\n"
        "seqproc.Receipt, seqproc.outbox.like, seqproc.aio.like, seqproc.producer.like\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SEQPROC_DOMAINS"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(done.stdout)
    assert "seqproc.domains.likes" in loaded  # the built-in domains' events are there ...
    tables = [m for m in loaded if m.startswith(("seqproc.models.tables", "models.tables"))]
    assert tables == []  # ... but not their tables
    assert [m for m in loaded if m.split(".")[0] == "sqlalchemy"] == []
    assert [m for m in loaded if m.endswith("_store")] == []


def test_the_contract_imports_nothing_of_the_worker_nor_of_the_domains() -> None:
    for path in sorted((ROOT / "models").rglob("*.py")):
        bad = sorted(
            name
            for name in imported_modules(path)
            if name.startswith(("seqproc.worker", "seqproc.domains", "seqproc.producer", "worker", "producer"))
        )
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_each_store_imports_its_base_never_its_sibling() -> None:
    store = ROOT / "worker" / "engine" / "store"
    assert not any("store.portable" in name for name in imported_modules(store / "postgres.py"))
    assert not any("store.postgres" in name for name in imported_modules(store / "portable.py"))
