"""CI cannot stay green by skipping: with ``CI`` set, a pytest run under tests/conftest.py that reports a skip other
than a named soak variant fails and names the skipped test; without ``CI`` the same skip is a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SOAK_VARIANTS

PLANTED = """
import pytest

def test_runs() -> None:
    assert True


def test_needs_a_missing_binary() -> None:
    pytest.skip("frobnicate is not installed")


@pytest.mark.skip(reason="not today")
def test_marked_skip() -> None:
    raise AssertionError("never runs")


@pytest.mark.xfail(reason="a known bug, not a skip", strict=True)
def test_known_bug() -> None:
    raise AssertionError("the bug")
"""


def run_pytest(directory: Path, *args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """``pytest args`` in ``directory``, with ``CI=true`` or without ``CI``."""
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(ROOT)}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_planted(directory: Path, *args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own in ``directory``, with the suite's conftest as a plugin (its hooks, as in CI)."""
    (directory / "pytest.ini").write_text("[pytest]\n")  # not the repository's settings: only what is given here
    return run_pytest(directory, "-p", "tests.conftest", *args, ci=ci)


def test_a_skip_fails_the_run_when_ci_is_set_and_names_the_skipped_tests(tmp_path: Path) -> None:
    (tmp_path / "test_planted.py").write_text(PLANTED)
    run = run_planted(tmp_path, "test_planted.py", ci=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in run.stdout  # the tests themselves did not fail...
    # ...the audit did, naming each skip and why; the xfail is no skip.
    assert "2 test(s) skipped although CI is set" in run.stdout
    assert "SKIPPED IN CI test_planted.py::test_needs_a_missing_binary: Skipped: frobnicate is not installed" in (
        run.stdout
    )
    assert "SKIPPED IN CI test_planted.py::test_marked_skip: Skipped: not today" in run.stdout
    assert "test_known_bug" not in run.stdout.split("skipped with CI set")[1]


def test_a_module_skipped_at_import_fails_the_run_when_ci_is_set(tmp_path: Path) -> None:
    (tmp_path / "test_module.py").write_text('import pytest\n\npytest.importorskip("no_such_module_here")\n')
    (tmp_path / "test_other.py").write_text("def test_runs() -> None:\n    assert True\n")
    run = run_planted(tmp_path, ".", ci=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SKIPPED IN CI test_module.py: " in run.stdout


def test_without_ci_a_skip_is_a_skip(tmp_path: Path) -> None:
    (tmp_path / "test_planted.py").write_text(PLANTED)
    run = run_planted(tmp_path, "test_planted.py", ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in run.stdout
    assert "SKIPPED IN CI" not in run.stdout


def test_the_named_soak_variants_may_skip_in_ci() -> None:
    """The real soak variants, collected from the suite without ``--soak``: skipped, and the run passes in CI."""
    run = run_pytest(ROOT, *sorted(SOAK_VARIANTS), ci=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(SOAK_VARIANTS)} skipped" in run.stdout
    assert "SKIPPED IN CI" not in run.stdout
