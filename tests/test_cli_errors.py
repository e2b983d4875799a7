"""The CLI turns slimkit's own errors, OS errors and out-of-memory into one line with exit code 2;
--debug (before or after the command) and SLIMKIT_DEBUG=1 show the traceback instead."""
import pytest

import slimkit.cli.demo
from slimkit import cli
from slimkit.errors import DataError


def _failing_demo(monkeypatch, exc):
    def run(args):
        raise exc

    monkeypatch.setattr(slimkit.cli.demo, "run", run)


@pytest.mark.parametrize("exc,line", [
    (DataError("x.npz: sample 7 is bad"), "slimkit demo: error: x.npz: sample 7 is bad"),
    (PermissionError(13, "Permission denied", "/ro/out"), "slimkit demo: error: Permission denied: '/ro/out'"),
    (IsADirectoryError(21, "Is a directory", "prof.json"), "slimkit demo: error: Is a directory: 'prof.json'"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 313600000000 bytes"), "slimkit demo: error: out of memory ("),
    (MemoryError(), "slimkit demo: error: out of memory (MemoryError); use smaller inputs or batch sizes"),
])
def test_errors_are_one_line_with_rc_2(monkeypatch, capsys, exc, line):
    _failing_demo(monkeypatch, exc)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(line), err


def test_ctrl_c_is_one_line_with_rc_130(monkeypatch, capsys):
    _failing_demo(monkeypatch, KeyboardInterrupt())
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err.strip() == "slimkit demo: interrupted"


@pytest.mark.parametrize("argv", [["--debug", "demo"], ["demo", "--debug"]])
def test_debug_shows_the_traceback(monkeypatch, argv):
    _failing_demo(monkeypatch, DataError("bad file"))
    with pytest.raises(DataError, match="bad file"):
        cli.main(argv)


def test_debug_from_the_environment(monkeypatch):
    _failing_demo(monkeypatch, DataError("bad file"))
    monkeypatch.setenv("SLIMKIT_DEBUG", "1")
    with pytest.raises(DataError):
        cli.main(["demo"])


def test_bugs_still_raise(monkeypatch):
    # An unexpected exception type is a slimkit bug: its traceback must not be hidden.
    _failing_demo(monkeypatch, KeyError("internal"))
    with pytest.raises(KeyError):
        cli.main(["demo"])
