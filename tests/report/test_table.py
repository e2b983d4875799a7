"""slimkit.report.table: exact text and markdown output."""
import pytest

from slimkit.report.table import format_table, format_value, to_markdown

ROWS = [{"name": "conv", "macs": 3888, "ms": 0.1234567}, {"name": "fc", "macs": 720, "ms": None}]
COLS = ["name", ("macs", "MACs"), ("ms", "median ms")]


def test_format_value():
    assert format_value(1234567) == "1,234,567"
    assert format_value(0.1234567) == "0.1235"
    assert format_value(12345.6) == "12,346"
    assert format_value(2.5e-5) == "2.500e-05"
    assert format_value(None) == "-" and format_value(True) == "True" and format_value("x") == "x"


def test_format_table_aligns_numbers_right():
    assert format_table(ROWS, COLS).splitlines() == [
        "name   MACs  median ms",
        "----  -----  ---------",
        "conv  3,888     0.1235",
        "fc      720          -",
    ]
    assert format_table(ROWS, COLS, title="T").splitlines()[0] == "T"


def test_to_markdown():
    assert to_markdown(ROWS, COLS).splitlines() == [
        "| name | MACs | median ms |",
        "|---|---:|---:|",
        "| conv | 3,888 | 0.1235 |",
        "| fc | 720 | - |",
    ]
    assert to_markdown([{"a": "x|y"}], ["a"]).splitlines()[-1] == "| x\\|y |"


def test_sequence_rows_and_errors():
    assert format_table([("a", 1)], ["k", "v"]).splitlines()[-1] == "a  1"
    with pytest.raises(ValueError, match="expected 2"):
        format_table([("a",)], ["k", "v"])
    with pytest.raises(ValueError, match="at least one column"):
        format_table(ROWS, [])
