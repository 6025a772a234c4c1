"""``--partitions`` parsing: ranges, lists, "all", and clear errors for anything else."""

from __future__ import annotations

import pytest

from seqproc.models.errors import ConfigError, SeqprocError
from seqproc.worker.ownership.partitions import parse_partitions


@pytest.mark.parametrize(
    ("spec", "total", "expected"),
    [
        ("0-7", 16, [0, 1, 2, 3, 4, 5, 6, 7]),
        ("0,3,5-6", 16, [0, 3, 5, 6]),
        (" 1 , 2 ", 16, [1, 2]),
        ("5", 16, [5]),
        ("15", 16, [15]),
        ("8-15", 16, list(range(8, 16))),
        ("3-3", 16, [3]),
        ("6,1,1,0-2", 16, [0, 1, 2, 6]),
        ("all", 16, list(range(16))),
        ("ALL", 4, [0, 1, 2, 3]),
        (" all ", 4, [0, 1, 2, 3]),
        ("", 4, [0, 1, 2, 3]),
        (None, 16, list(range(16))),
        (None, 1, [0]),
    ],
)
def test_parse_partitions(spec: str | None, total: int, expected: list[int]) -> None:
    assert parse_partitions(spec, total) == expected


@pytest.mark.parametrize(
    ("spec", "total", "named"),
    [
        ("7-0", 16, "'7-0'"),
        ("x", 16, "'x'"),
        ("1,x", 16, "'x'"),
        ("1-", 16, "'1-'"),
        ("-1", 16, "'-1'"),
        ("1.5", 16, "'1.5'"),
        ("1,,2", 16, "''"),
        ("16", 16, "16"),
        ("0-16", 16, "16"),
        ("4", 4, "4"),
    ],
)
def test_parse_partitions_errors(spec: str, total: int, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_partitions(spec, total)
    message = str(caught.value)
    assert isinstance(caught.value, SeqprocError)
    assert message.startswith("--partitions: ")
    assert named in message
    assert "\n" not in message


def test_out_of_range_error_says_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"16 is out of range; partitions are 0-15 \(SEQPROC_PARTITIONS\)"):
        parse_partitions("16", 16)
