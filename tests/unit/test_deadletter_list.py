"""``seqproc deadletter list`` as a table: each dead letter's whole error, as stored, however long."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import Engine, insert

from seqproc.models.tables.ledger import DeadLetter
from seqproc.worker.cli import cli

#: What a failed apply stores: the constraint that failed is past the 80th character, the SQLAlchemy parameters line
#: looks like rich markup, and the token at the end is wider than the error column.
ERROR = (
    'apply failed: IntegrityError: (psycopg.errors.CheckViolation) new row for relation "product_stock" violates '
    'check constraint "product_stock_available_nonnegative"\n'
    "DETAIL:  Failing row contains (7, -1, 0, 0).\n"
    "[SQL: UPDATE product_stock SET available=(product_stock.available - %(available_1)s::INTEGER) "
    "WHERE product_stock.product_id = %(product_id_1)s::BIGINT]\n"
    "[parameters: {'available_1': 2, 'product_id_1': 7}]\n"
    "[red]not markup[/red] " + "unbroken-" * 30
)


def _column(output: str, name: str) -> str:
    """The text of column ``name`` over every row line of the table, borders and wrapping taken out."""
    header = next(line for line in output.splitlines() if line.startswith("┃"))
    index = [cell.strip() for cell in header.split("┃")].index(name)
    rows = [line for line in output.splitlines() if line.startswith("│")]
    return "".join(row.split("│")[index].strip() for row in rows)


def _without_space(text: str) -> str:
    return "".join(text.split())


def test_deadletter_list_shows_the_whole_error(sqlite_url: str, sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.execute(
            insert(DeadLetter).values(
                partition=3, event_key="[bold]key-1", entity_key="product:7", body="{}", error=ERROR
            )
        )
    result = CliRunner().invoke(cli, ["deadletter", "list"], env={"SEQPROC_DATABASE_URL": sqlite_url})
    assert result.exit_code == 0, result.output
    assert '"product_stock_available_nonnegative"' in result.output
    # Every character of the error is in its column, in order; only the line breaks differ.
    assert _without_space(_column(result.output, "error")) == _without_space(ERROR)
    assert _column(result.output, "idempotency key") == "[bold]key-1"
