"""Distributed faults with `slimkit train --nproc 2` (issue 11 case 10, issue 13): a SIGKILLed worker
is restarted (--max-restarts, c10d rendezvous) from the last complete checkpoint, compressor state
included, and ends bit-identical to an uninterrupted run; a frozen (SIGSTOPped) worker ends the job
within --timeout with a clear error; SIGTERM to the launcher leaves no torchrun or worker behind."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slimkit.train import launch
from slimkit.train.checkpoint import load_checkpoint

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(400)]
STEPS_PER_EPOCH = 23  # digits: 1437 training images / 2 ranks / batch 32, rounded up


def _cmd(out, *extra):
    return [sys.executable, "-m", "slimkit.cli", "train", "--model", "lenet5", "--data", "digits?resize=28",
            "--nproc", "2", "--epochs", "3", "--batch-size", "32", "--lr", "0.05", "--out", str(out),
            "--no-progress", "--compress", "ecq(bits=2)", *extra]


def _start(out, *extra):
    # faulthandler: a SIGABRT from _finish makes a hung process print every thread's Python stack
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(_cmd(out, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _procs(out):
    """{(rank, restart): pid} of this run's workers, plus 'agent' -> torchrun's pid."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                argv = f.read().split("\0")
            with open(f"/proc/{pid}/environ") as f:
                env = dict(e.split("=", 1) for e in f.read().split("\0") if "=" in e)
        except OSError:
            continue
        if str(out) not in argv:
            continue
        if "torch.distributed.run" in argv:
            found["agent"] = int(pid)
        elif "RANK" in env:
            found[(int(env["RANK"]), env.get("TORCHELASTIC_RESTART_COUNT", "0"))] = int(pid)
    return found


def _wait_for_checkpoint(proc, out, epoch=1, limit=300):
    path = out / "checkpoint.pt"
    t0 = time.time()
    while time.time() - t0 < limit and proc.poll() is None:
        if path.exists() and load_checkpoint(path)["epoch"] >= epoch:
            return
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of epoch {epoch} appeared (rc {proc.poll()}): {proc.communicate()[0][-2000:]}")


def _finish(proc, out, limit=300):
    """The job's output; a job still running after ``limit`` s fails the test with the stacks of its
    processes that are still alive (which one hangs, and where)."""
    try:
        return proc.communicate(timeout=limit)[0]
    except subprocess.TimeoutExpired:
        alive = {**_procs(out), "launcher": proc.pid}
        for pid in alive.values():
            try:
                os.kill(pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)
        log = proc.communicate(timeout=30)[0]
        pytest.fail(f"the job ran over {limit} s; still alive then: {alive}; log:\n{log[-8000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_torchrun_command_uses_a_c10d_rendezvous_when_restarts_are_asked():
    cmd = launch.torchrun_command(2, 3, ["slimkit.cli", "train"])
    assert "--rdzv-backend" in cmd and "c10d" in cmd and "--max-restarts=3" in cmd and "--standalone" not in cmd
    assert cmd[cmd.index("--rdzv-conf") + 1] == "is_host=1"  # never joins another job's store as a client
    assert cmd[cmd.index("--rdzv-id") + 1] != launch.torchrun_command(2, 3, ["m"])[cmd.index("--rdzv-id") + 1]
    assert "--standalone" in launch.torchrun_command(2, 0, ["slimkit.cli", "train"])
    with pytest.raises(ValueError, match="--timeout must be a finite number of seconds > 0"):
        launch.check_timeout("nan")


def test_killed_worker_restarts_from_the_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = _start(killed, "--max-restarts", "1", "--timeout", "60")
    _wait_for_checkpoint(proc, killed)
    os.kill(_procs(killed)[(1, "0")], signal.SIGKILL)
    log = _finish(proc, killed)
    assert proc.returncode == 0, log[-3000:]
    line = next(s for s in log.splitlines() if "restart 1: resuming from" in s)
    epoch = int(line.split("(epoch ")[1].split(",")[0])
    step = int(line.split("step ")[1].rstrip(")"))
    assert epoch >= 1 and step == epoch * STEPS_PER_EPOCH  # resumed at the checkpointed step
    final = load_checkpoint(killed / "checkpoint.pt")
    assert final["epoch"] == 3 and final["step"] == 3 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3]
    assert all("compressor2" in r["extra_state"]["comm"] for r in final["ranks"])  # both error feedbacks
    ref = _start(straight)
    log_ref = _finish(ref, straight)
    assert ref.returncode == 0, log_ref[-3000:]
    a, b = (torch.load(d / "model.pt", weights_only=True) for d in (killed, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same weights as a run nobody killed


def test_frozen_worker_ends_the_job_within_the_timeout_with_a_clear_error(tmp_path):
    proc = _start(tmp_path, "--timeout", "5")
    _wait_for_checkpoint(proc, tmp_path)
    frozen = _procs(tmp_path)[(1, "0")]
    os.kill(frozen, signal.SIGSTOP)
    t0 = time.time()
    try:
        log = _finish(proc, tmp_path, limit=120)  # 5 s timeout, then torchrun's 30 s grace before SIGKILL
    finally:
        try:
            os.kill(frozen, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert proc.returncode != 0 and time.time() - t0 < 100, log[-3000:]
    assert "distributed training stopped: a peer process froze or died (no answer within --timeout 5 s)" in log, \
        log[-3000:]


def test_sigterm_to_the_launcher_stops_torchrun_and_every_worker(tmp_path):
    proc = _start(tmp_path, "--epochs", "50")
    t0 = time.time()
    while len(_procs(tmp_path)) < 3 and time.time() - t0 < 200 and proc.poll() is None:
        time.sleep(0.1)
    assert len(_procs(tmp_path)) == 3, "torchrun and 2 workers should be running"
    proc.send_signal(signal.SIGTERM)  # the launcher alone, not its process group
    _finish(proc, tmp_path, limit=120)
    t0 = time.time()
    while _procs(tmp_path) and time.time() - t0 < 60:
        time.sleep(0.2)
    assert _procs(tmp_path) == {}
