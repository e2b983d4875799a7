"""Launching ``slimkit train --nproc N`` under torchrun, and what the workers need from it.

- ``torchrun_command``: ``--max-restarts K`` uses a c10d rendezvous on a fresh local port. With
  ``--standalone`` a restarted gloo group cannot re-form in torch 2.13 ("connectFullMesh ...
  Connection refused"); an explicit c10d endpoint re-forms it. The rendezvous has its own run id
  and ``is_host=1``: torchrun would otherwise fall back to joining, as a client with run id "none",
  any store that took the port between our probe and its bind.
- ``run_forwarding``: the launcher forwards SIGINT/SIGTERM/SIGHUP to torchrun (which stops its
  workers) and asks the kernel to SIGTERM torchrun if the launcher itself dies, even by SIGKILL,
  so no torchrun or worker is left behind.
- ``collective_timeout``: every collective of a worker waits at most ``--timeout`` seconds (the
  launcher passes it on as ``SLIMKIT_DIST_TIMEOUT``), so a frozen or dead peer ends the job
  with an error instead of a hang.
- ``restart_resume``: a worker started again by torchrun (``TORCHELASTIC_RESTART_COUNT > 0``)
  resumes from the run's last complete checkpoint.
"""
import ctypes
import datetime
import os
import signal
import socket
import subprocess
import sys
import uuid

DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "SLIMKIT_DIST_TIMEOUT"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, max_restarts: int, module_argv: list) -> list:
    """The torchrun command line that runs ``python -m <module_argv>`` on ``nproc`` local processes."""
    if max_restarts > 0:
        rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-conf", "is_host=1",
                "--rdzv-id", f"slimkit-{uuid.uuid4().hex[:12]}", "--nnodes", "1", f"--max-restarts={max_restarts}"]
    else:
        rdzv = ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *rdzv, f"--nproc_per_node={nproc}", "-m", *module_argv]


def _die_with_parent():
    # Linux: SIGTERM this child when the launcher dies for any reason (prctl PR_SET_PDEATHSIG = 1)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def run_forwarding(cmd: list, env: dict | None = None) -> int:
    """Run ``cmd`` and return its exit code; signals the launcher gets are passed on to it."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(cmd, env=env, preexec_fn=preexec)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the handler forwarded it; keep waiting for torchrun to stop
                continue
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def collective_timeout() -> datetime.timedelta:
    """The bound on every collective of this worker (``--timeout``, default 600 s)."""
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


def check_timeout(value) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"--timeout must be a finite number of seconds > 0, got {value!r}")
    return seconds


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def restart_resume(settings: dict, out_dir: str) -> None:
    """In a worker that torchrun restarted: resume from the last complete checkpoint of this run,
    or start the run again (its own earlier files are replaced) when none was written yet."""
    n = restart_count()
    if n == 0:
        return
    path = os.path.join(out_dir, "checkpoint.pt")
    if os.path.isfile(path):
        settings["resume"] = True
        if int(os.environ.get("RANK", "0")) == 0:
            from slimkit.train.checkpoint import load_checkpoint

            state = load_checkpoint(path)
            print(f"slimkit train: restart {n}: resuming from {path} (epoch {state['epoch']}, step {state['step']})",
                  flush=True)
    else:
        settings["overwrite"] = True  # the run's own files from the failed attempt (TrainConfig.overwrite)


def is_peer_failure(err: BaseException) -> bool:
    """A collective that failed because a peer froze (timeout) or died (connection closed/reset)."""
    text = str(err).lower()
    return any(k in text for k in ("timed out", "timeout", "connection closed", "connection reset",
                                   "connection refused", "broken pipe", "peer"))


def init_process_group(backend: str) -> None:
    """``dist.init_process_group`` with the ``--timeout`` bound, and, in a worker that torchrun
    restarted, keys under a fresh prefix of torchrun's store: otherwise a restarted gloo group can
    read the dead attempt's addresses and fail with "connectFullMesh ... Connection refused"."""
    import torch.distributed as dist

    timeout = collective_timeout()
    n = restart_count()
    if n == 0 or "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, timeout=timeout)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_store, timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"slimkit-attempt-{n}/", store), rank=rank,
                            world_size=world, timeout=timeout)
