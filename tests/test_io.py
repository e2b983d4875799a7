"""slimkit._io: atomic writes survive an interrupt, output folders are validated and never clobbered."""
import os
import signal

import pytest

from slimkit import _io
from slimkit.errors import OutputError


def _sigint():
    # a real Ctrl-C, sent to this thread: os.kill(pid) may land on a torch worker thread and be handled late,
    # after the block under test (seen under load)
    signal.raise_signal(signal.SIGINT)


@pytest.mark.usefixtures("sigint_raises")
def test_sigint_during_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old good model")
    with pytest.raises(KeyboardInterrupt):
        with _io.atomic_write(path, "wb") as f:
            f.write(b"half of the new")
            _sigint()
            f.write(b" model")  # never reached
    assert path.read_bytes() == b"old good model"
    assert os.listdir(tmp_path) == ["model.bin"]  # no temp file or folder left behind


def test_atomic_path_keeps_the_file_name_and_replaces_on_success(tmp_path):
    path = tmp_path / "out.pt2"
    path.write_text("old")
    with _io.atomic_path(path) as tmp:
        assert os.path.basename(tmp) == "out.pt2" and os.path.dirname(tmp) != str(tmp_path)
        with open(tmp, "w") as f:
            f.write("new")
        assert path.read_text() == "old"  # nothing visible until the block ends
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.pt2"]


def test_check_out_dir(tmp_path):
    fresh = tmp_path / "a" / "b"
    assert _io.check_out_dir(fresh) == str(fresh) and fresh.is_dir()
    (fresh / "report.md").write_text("earlier result")
    with pytest.raises(OutputError, match=r"already holds results \(report.md\); pass --overwrite"):
        _io.check_out_dir(fresh)
    assert _io.check_out_dir(fresh, overwrite=True) == str(fresh)
    assert _io.check_out_dir(fresh, existing_ok=True) == str(fresh)
    with pytest.raises(OutputError, match="is an existing file, not a folder"):
        _io.check_out_dir(fresh / "report.md")
    (fresh / "report.md").unlink()
    (fresh / (_io.TMP_PREFIX + "left-by-a-kill")).write_text("")
    assert _io.check_out_dir(fresh) == str(fresh)  # leftovers of a killed write do not count as results


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (unwritable even for root)")
def test_unwritable_out_dir_and_file_are_refused_before_work():
    with pytest.raises(OutputError, match="is not writable"):
        _io.check_out_dir("/proc/self/slimkit-out")
    with pytest.raises(OutputError, match="is not writable"):
        _io.check_out_file("/proc/self/slimkit-out/prof.json")


def test_check_out_file(tmp_path):
    with pytest.raises(OutputError, match="is a folder; give a file path"):
        _io.check_out_file(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        _io.check_out_file(tmp_path / "f" / "x.json")
    assert _io.check_out_file(tmp_path / "new" / "x.json") == str(tmp_path / "new" / "x.json")
    assert (tmp_path / "new").is_dir() and os.listdir(tmp_path / "new") == []


@pytest.mark.usefixtures("sigint_raises")
def test_staged_outputs_interrupted_leaves_folder_as_it_was(tmp_path):
    (tmp_path / "model.pt2").write_text("previous model")
    (tmp_path / "report.md").write_text("describes the previous model")
    with pytest.raises(KeyboardInterrupt):
        with _io.staged_outputs(tmp_path, stale=("model.pt2", "model.onnx", "report.md")) as stage:
            with open(stage.path("report.md"), "w") as f:
                f.write("new report")
            _sigint()
    assert sorted(os.listdir(tmp_path)) == ["model.pt2", "report.md"]
    assert (tmp_path / "model.pt2").read_text() == "previous model"
    assert (tmp_path / "report.md").read_text() == "describes the previous model"


def test_staged_outputs_commit_replaces_and_removes_stale_files(tmp_path):
    (tmp_path / "model.pt2").write_text("previous eager model")
    (tmp_path / "user-notes.txt").write_text("not ours")
    with _io.staged_outputs(tmp_path, stale=("model.pt2", "model.onnx", "report.md")) as stage:
        for name in ("model.onnx", "report.md"):
            with open(stage.path(name), "w") as f:
                f.write("new " + name)
        with pytest.raises(ValueError, match="plain file names"):
            stage.path("../escape")
    # the stale model.pt2 no longer sits beside the new model.onnx; files we do not own stay
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "report.md", "user-notes.txt"]
    assert (tmp_path / "report.md").read_text() == "new report.md"
