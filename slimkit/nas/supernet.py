"""Single-path (SPOS-style) supernet training and per-architecture evaluation.

Training: every step samples one architecture uniformly (seeded by step, so a resumed run samples the
same sequence), runs it forward/backward, and steps the optimizer through ``DisturbanceImmune`` (which
is plain weight sharing with ``di.enabled=False``). Evaluation: BatchNorm statistics are recalibrated
on a few training batches for the architecture (weight-sharing BN statistics belong to no single
path), then accuracy is measured on a held-out split.
"""
import os
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from slimkit.nas.di import DIConfig, DisturbanceImmune


def arch_rng(seed, step):
    return random.Random(seed * 1_000_003 + step)


def _bn_modules(model):
    return [m for m in model.modules() if hasattr(m, "reset_running_stats") and hasattr(m, "momentum")]


@torch.no_grad()
def recalibrate_bn(model, batches):
    """Reset BN statistics and re-estimate them (cumulative average) on ``batches`` of inputs."""
    bns = _bn_modules(model)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@torch.no_grad()
def accuracy(model, batches):
    """Top-1 accuracy (%) of ``model`` in eval mode over ``(x, y)`` batches."""
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / max(total, 1)


class ArchEvaluator:
    """``evaluator(arch) -> accuracy %`` of ``arch`` inside the supernet on fixed batches (deterministic)."""

    def __init__(self, supernet, calib_x, eval_x, eval_y, calib_batch=128, eval_batch=500):
        self.supernet = supernet
        self.calib = [calib_x[i:i + calib_batch] for i in range(0, len(calib_x), calib_batch)]
        self.batches = [(eval_x[i:i + eval_batch], eval_y[i:i + eval_batch]) for i in range(0, len(eval_y), eval_batch)]

    def __call__(self, arch):
        self.supernet.set_arch(arch)
        recalibrate_bn(self.supernet, self.calib)
        return accuracy(self.supernet, self.batches)


@dataclass
class SupernetConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"  # "cosine" over `steps` | "none"
    grad_clip: float = 5.0
    flip: bool = True  # random horizontal flips
    seed: int = 0
    di: DIConfig = field(default_factory=lambda: DIConfig(enabled=False))
    checkpoint_every: int = 200  # steps; 0 = only at the end
    record_images: int = 8  # DI with record="post": images of the batch re-run after the step to record inputs
    version: int = 1

    def __post_init__(self):
        if isinstance(self.di, dict):
            self.di = DIConfig(**self.di)
        if self.lr_schedule not in ("cosine", "none"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'none', got {self.lr_schedule!r}")
        if int(self.steps) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")


class SupernetTrainer:
    """Trains ``supernet`` on tensors ``(x, y)`` (normalised inputs); ``run()`` resumes from
    ``checkpoint_path`` when it exists and checkpoints every ``config.checkpoint_every`` steps."""

    def __init__(self, supernet, x, y, config: SupernetConfig = None, checkpoint_path=None, sampler=None):
        self.supernet, self.x, self.y = supernet, x, y
        self.config = config or SupernetConfig()
        self.checkpoint_path = checkpoint_path
        self.sampler = sampler or (lambda step: supernet.space.sample(arch_rng(self.config.seed, step)))
        cfg = self.config
        self.optimizer = torch.optim.SGD(supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=True)
        self.di = DisturbanceImmune(self.optimizer, supernet, cfg.di)
        self.step_count = 0
        self.history = []  # one row per logged step
        self.train_seconds = 0.0  # wall time of the steps (perf_counter)
        # process CPU time of the steps: with 1 thread the step cost even when the CPU is shared (wall time then
        # also counts waiting); None when resumed from a checkpoint that predates it
        self.train_cpu_seconds = 0.0

    def _batch(self, step):
        n, bs = len(self.y), self.config.batch_size
        per_epoch = max(1, n // bs)
        epoch, pos = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        idx = torch.randperm(n, generator=g)[pos * bs:(pos + 1) * bs]
        x, y = self.x[idx], self.y[idx]
        if self.config.flip:
            flip = torch.rand(len(idx), generator=torch.Generator().manual_seed(step)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x, y

    def _lr(self, step):
        cfg = self.config
        if cfg.lr_schedule == "cosine":
            import math

            return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.steps))
        return cfg.lr

    def train_step(self, arch, x, y):
        """One step of ``arch``; returns the loss. DI folds the architecture's inputs afterwards."""
        self.supernet.set_arch(arch)
        self.supernet.train()
        self.di.zero_grad()
        loss = F.cross_entropy(self.supernet(x), y)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.config.grad_clip)
        self.di.step()
        if self.di.enabled and self.di.config.record == "post":
            with torch.no_grad(), self.di.recording_inputs():
                self.supernet(x[:self.config.record_images])
        self.di.end_architecture()
        return loss.item()

    def run(self, steps=None, progress=True, stop_after=None):
        """Train up to ``steps`` total (default config.steps); ``stop_after`` ends early after that many
        new steps (a chunk of a long run). Returns the history."""
        total = int(steps or self.config.steps)
        self.load()
        from tqdm import tqdm

        bar = tqdm(total=total, initial=self.step_count, desc="supernet", disable=not progress, leave=False)
        done = 0
        while self.step_count < total and (stop_after is None or done < stop_after):
            t0, c0 = time.perf_counter(), time.process_time()
            for g in self.optimizer.param_groups:
                g["lr"] = self._lr(self.step_count)
            arch = self.sampler(self.step_count)
            x, y = self._batch(self.step_count)
            loss = self.train_step(arch, x, y)
            self.train_seconds += time.perf_counter() - t0
            if self.train_cpu_seconds is not None:
                self.train_cpu_seconds += time.process_time() - c0
            self.history.append({"step": self.step_count, "loss": loss, "arch": arch.encode()})
            self.step_count += 1
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            every = self.config.checkpoint_every
            if every and self.step_count % every == 0:
                self.save()
        bar.close()
        self.save()
        return self.history

    def state_dict(self):
        from slimkit.train.checkpoint import get_rng_state

        # "optimizer", "epoch" and "rng" make it a valid slimkit training checkpoint (the DI state holds the optimizer)
        return {"model": self.supernet.state_dict(), "di": self.di.state_dict(), "step": self.step_count,
                "optimizer": {}, "epoch": 0, "rng": get_rng_state(),
                "history": self.history, "train_seconds": self.train_seconds,
                "train_cpu_seconds": self.train_cpu_seconds, "config": asdict(self.config)}

    def save(self):
        if not self.checkpoint_path:
            return
        from slimkit.train.checkpoint import save_checkpoint

        save_checkpoint(self.checkpoint_path, self.state_dict())

    def load(self):
        if not self.checkpoint_path or not os.path.exists(self.checkpoint_path):
            return False
        from slimkit.train.checkpoint import load_checkpoint

        state = load_checkpoint(self.checkpoint_path)
        mine, theirs = asdict(self.config), dict(state["config"])
        for key in ("checkpoint_every",):
            mine.pop(key), theirs.pop(key, None)
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise ValueError(f"supernet checkpoint {self.checkpoint_path!r} was made with other settings ({', '.join(diff)}); "
                             f"use a new --out directory or the same settings")
        self.supernet.load_state_dict(state["model"])
        self.di.load_state_dict(state["di"])
        self.step_count = int(state["step"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        cpu = state.get("train_cpu_seconds")
        self.train_cpu_seconds = None if cpu is None else float(cpu)
        return True
