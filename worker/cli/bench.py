"""``seqproc bench ...``: hands its arguments to the benchmark of a source checkout (``bench/``).

The benchmark is not part of the installed package (as procrastinate keeps its demos out of its wheel): it is run
from a clone of the repository. It is found, in this order, at ``$SEQPROC_BENCH_DIR``, beside the ``seqproc``
package when that is a source checkout (an editable install), or at ``./bench``. It is loaded from that folder
under the name ``seqproc_bench``, never by a name a user's own ``bench`` module could shadow.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import click

from seqproc.models.errors import ConfigError
from seqproc.worker.cli.text import plain_help

__all__ = ["bench", "find_bench", "load_bench"]

#: The name the checkout's ``bench/`` package is loaded under.
MODULE_NAME = "seqproc_bench"
#: Names the folder of the benchmark (a checkout's ``bench/``).
DIR_ENV = "SEQPROC_BENCH_DIR"


def find_bench() -> Path:
    """The benchmark's folder, or :class:`ConfigError` saying where it was looked for."""
    import seqproc

    candidates = []
    if os.environ.get(DIR_ENV):
        candidates.append(Path(os.environ[DIR_ENV]))
    candidates.append(Path(seqproc.__file__).resolve().parent.parent / "bench")
    candidates.append(Path.cwd() / "bench")
    for folder in candidates:
        # seqproc's own bench/, not any folder or installed package that happens to be called bench.
        if all((folder / name).is_file() for name in ("__init__.py", "cli.py", "seqproc_strategy.py")):
            return folder
    raise ConfigError(
        "seqproc bench runs the benchmark of a source checkout (git clone, then `make install`), which is not part of "
        f"the installed package; none found at {', '.join(str(c) for c in candidates)} (set {DIR_ENV} to its bench/)"
    )


def load_bench() -> ModuleType:
    """The checkout's benchmark command line (its ``cli`` module), loaded once per process."""
    if MODULE_NAME not in sys.modules:
        folder = find_bench()
        spec = importlib.util.spec_from_file_location(
            MODULE_NAME, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot load the benchmark from {folder}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[MODULE_NAME]
            raise
    return importlib.import_module(f"{MODULE_NAME}.cli")


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Compare seqproc with row locks, atomic updates, optimistic and serializable retries, and Redis write-behind
    (from a source checkout; `seqproc bench --help` lists its options)."""
    command: click.Command = load_bench().bench
    plain_help(command)
    command.main(args=list(ctx.args), prog_name="seqproc bench", standalone_mode=False)
