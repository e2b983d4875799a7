"""The training loop: ``fit(model, train_data, eval_data, config) -> TrainResult``.

The settings live in ``config.py`` (``TrainConfig``), the losses in ``losses.py``, the metrics files in
``metrics.py`` and the checkpoint format in ``checkpoint.py``; this file runs the loop.

One loop serves single-process and torchrun (DDP) runs. Optional parts are imported only when
configured: the optimizer registry (``slimkit.train.optim``), samplers (``slimkit.train.sampling``),
the memory planner (``slimkit.train.memory``) and gradient compression (``slimkit.comm``).
Everything a run produces goes to ``out_dir``: ``config.yaml`` (resolved config), ``metrics.csv`` and
``metrics.jsonl`` (one row per epoch), ``checkpoint.pt`` (last complete epoch) and ``model.pt``.

Fault handling: ``out_dir`` must be empty unless ``overwrite`` or ``resume`` is set; every file is written
atomically (temp + fsync + rename); a resumed run must match the checkpoint's settings; a NaN/Inf loss
or gradient stops the run (``on_nonfinite="raise"``) or skips that step (``"skip"``, counted per epoch in
``nonfinite_steps``), and a checkpoint never holds non-finite weights.
"""
import contextlib
import dataclasses
import os
import random
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm import tqdm  # not tqdm.auto: its asyncio wrapper calls iter() on the DataLoader an extra time

from slimkit import _io
from slimkit.errors import CheckpointError, TrainingError
from slimkit.train import checkpoint as ckpt
# the config, the losses and the metrics log have their own files; these names stay importable from here
from slimkit.train.config import (LOG_FORMATS, NONFINITE_POLICIES, RESUME_MUST_MATCH, SCHEDULES,  # noqa: F401
                                  TrainConfig, check_device, config_from_dict, config_to_dict, parse_size)
from slimkit.train.losses import LOSSES, correct_count, per_sample_loss  # noqa: F401
from slimkit.train.metrics import COMM_COUNTERS, MetricsLog, summary_line

OUTPUT_FILES = ("config.yaml", "metrics.csv", "metrics.jsonl", "checkpoint.pt", "model.pt")


@dataclass
class TrainResult:
    model: torch.nn.Module  # the trained model (unwrapped from DDP)
    history: list  # one metrics dict per epoch
    config: TrainConfig
    out_dir: Optional[str] = None
    checkpoint_path: Optional[str] = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def eval_accuracy(self) -> Optional[float]:
        return self.final.get("eval_accuracy")


def fit(model, train_data, eval_data=None, config: Optional[TrainConfig] = None, *, plugins=None, **overrides):
    """Train ``model`` on ``train_data`` (a Dataset of (input, target)); evaluate on ``eval_data``.

    ``config`` fields can be overridden by keyword, e.g. ``fit(model, train, test, epochs=3)``.
    ``train_data`` may also be a ``slimkit.data.DatasetSplits`` (its ``train``/``test`` are used).
    ``plugins`` maps names to stateful objects (``state_dict``/``load_state_dict``) stored in checkpoints.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    if eval_data is None and hasattr(train_data, "train") and hasattr(train_data, "test"):
        train_data, eval_data = train_data.train, train_data.test
    return Trainer(model, train_data, eval_data, config, plugins=plugins).fit()


def evaluate(model, data, *, loss="ce", batch_size=256, device="cpu", huber_delta=1.0) -> dict:
    """Mean loss and accuracy (None for non-class targets) of ``model`` on a Dataset."""
    model.eval()
    total, loss_sum, correct, has_acc = 0, 0.0, 0, True
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size, sampler=SequentialSampler(data)):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += float(per_sample_loss(loss, out, y, huber_delta).sum())
            c = correct_count(out, y)
            has_acc = has_acc and c is not None
            correct += c or 0
            total += len(y)
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / total if has_acc and total else None}


class _Indexed(Dataset):
    """Yields (x, y, index) so a reweighting sampler knows which samples are in the batch."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x, y, i


class Trainer:
    """Owns one run; ``Trainer(model, train, eval, config).fit()`` is what :func:`fit` calls."""

    def __init__(self, model, train_data, eval_data=None, config: Optional[TrainConfig] = None, plugins=None):
        self.model, self.train_data, self.eval_data = model, train_data, eval_data
        self.config = config or TrainConfig()
        self.plugins = dict(plugins or {})
        if len(train_data) == 0:
            raise ValueError("train_data is empty; expected a Dataset with at least one (input, target) sample")

    def register_stateful(self, name, obj):
        """Store ``obj.state_dict()`` in every checkpoint under ``extra_state[name]``; restored on resume."""
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"plug-in {name!r} needs state_dict() and load_state_dict()")
        self.plugins[name] = obj

    # ----------------------------------------------------------------------------- setup
    def _setup_distributed(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._owns_group = False
        dev = self.config.device
        if dev == "auto":
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                from slimkit.train.launch import init_process_group  # bounded by --timeout, re-forms on restart

                init_process_group("nccl" if self.device.type == "cuda" else "gloo")
                self._owns_group = True
        self.is_main = self.rank == 0

    def _seed(self):
        s = self.config.seed + self.rank  # different dropout per rank; DDP broadcasts rank 0's weights
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)

    def _build_loader(self):
        cfg, data = self.config, self.train_data
        self.sampler, self.reweights = None, False
        self.generator = torch.Generator()
        if cfg.sampler:
            if self.world > 1:
                raise ValueError("a custom sampler is not supported in distributed runs yet; drop --sampler or --nproc")
            from slimkit.train.sampling import create_sampler

            self.sampler = create_sampler(cfg.sampler, len(data), seed=cfg.seed, **cfg.sampler_options)
            self.reweights = bool(getattr(self.sampler, "reweights", False))
            if self.reweights:
                data = _Indexed(data)
        elif self.world > 1:
            from torch.utils.data.distributed import DistributedSampler

            self.sampler = DistributedSampler(data, num_replicas=self.world, rank=self.rank, shuffle=True, seed=cfg.seed)
        else:
            self.sampler = RandomSampler(data, generator=self.generator)
        self.loader = DataLoader(data, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.num_workers,
                                 generator=self.generator, pin_memory=self.device.type == "cuda")

    def _set_epoch(self, epoch):
        # Shuffling depends only on (seed, epoch), so a resumed run sees the same batches.
        self.generator.manual_seed(self.config.seed * 100_003 + epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _prepare_model(self):
        cfg = self.config
        model = self.model.to(self.device)
        if cfg.memory_budget is not None:
            from slimkit.train.memory import apply_memory_budget

            n = min(cfg.batch_size, len(self.train_data))
            example = torch.utils.data.default_collate([self.train_data[i] for i in range(n)])[0].to(self.device)
            model = apply_memory_budget(model, example, parse_size(cfg.memory_budget),
                                        pack=cfg.memory_pack).to(self.device)
        self.core = model  # what gets saved: never the DDP wrapper
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.comm_state = None
        if cfg.compress:
            if self.world < 2:
                raise ValueError(f"compress={cfg.compress!r} needs a distributed run (slimkit train --nproc N)")
            from slimkit.comm import parse_compressor, register

            self.comm_state = register(model, parse_compressor(cfg.compress))
            self.register_stateful("comm", self.comm_state)
        self.net = model
        self.optimizer = _create_optimizer(cfg, model.parameters())
        if cfg.lr is None and "lr" in self.optimizer.param_groups[0]:  # saved and compared on resume as a number
            self.config = cfg = dataclasses.replace(cfg, lr=float(self.optimizer.param_groups[0]["lr"]))
        self.needs_closure = bool(getattr(self.optimizer, "needs_closure", False))
        if cfg.lr_schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        elif cfg.lr_schedule == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.lr_step_size, cfg.lr_gamma)
        else:
            self.scheduler = None

    # ----------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self):
        """Where this run writes its checkpoint: ``out_dir/checkpoint.pt``."""
        return os.path.join(self.config.out_dir, "checkpoint.pt") if self.config.out_dir else None

    @property
    def resume_path(self):
        return self.config.resume if isinstance(self.config.resume, str) else self.checkpoint_path

    def _local_state(self):
        """What differs between ranks: RNG streams and plug-in state (e.g. per-rank error buffers)."""
        extra = {name: obj.state_dict() for name, obj in self.plugins.items()}
        if hasattr(self.sampler, "state_dict"):
            extra["sampler"] = self.sampler.state_dict()
        return {"rng": ckpt.get_rng_state(), "extra_state": extra}

    def _save(self):
        """Collective in DDP runs (every rank calls it); rank 0 writes one file holding every rank's state."""
        self._check_finite_weights("saving the checkpoint")
        local = self._local_state()
        ranks = [local]
        if self.world > 1:
            import torch.distributed as dist

            ranks = [None] * self.world if self.is_main else None
            dist.gather_object(local, ranks, dst=0)
        if not self.is_main:
            return
        state = {
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "epoch": self.epoch,
            "step": self.step,
            "rng": local["rng"],
            "extra_state": local["extra_state"],
            "ranks": ranks,  # per-rank rng/extra_state, rank order
            "config": config_to_dict(self.config),
            "history": self.history,
        }
        ckpt.save_checkpoint(self.checkpoint_path, state)

    def _resume(self):
        path = self.resume_path
        if path is None:
            raise CheckpointError("resume needs out_dir (to find checkpoint.pt) or a checkpoint path")
        state = ckpt.load_checkpoint(path, map_location=self.device)
        self._check_resume_config(state.get("config") or {}, path)
        ranks = state.get("ranks") or []
        # Same world size: each rank takes back its own streams and buffers; otherwise rank 0's.
        local = ranks[self.rank] if len(ranks) == self.world else {"rng": state["rng"],
                                                                     "extra_state": state.get("extra_state", {})}
        try:
            self.core.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
            extra = local.get("extra_state", {})
            for name, obj in self.plugins.items():
                if name in extra:
                    obj.load_state_dict(extra[name])
            if "sampler" in extra and hasattr(self.sampler, "load_state_dict"):
                self.sampler.load_state_dict(extra["sampler"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"checkpoint {path!r} does not fit this model/optimizer: {err}") from err
        ckpt.set_rng_state(local["rng"])
        self.epoch, self.step, self.history = int(state["epoch"]), int(state["step"]), list(state.get("history", []))

    def _check_resume_config(self, stored, path):
        """Refuse to continue a run under other settings (a different optimizer would crash on its state,
        different data would continue silently), before anything is written."""
        now = config_to_dict(self.config)
        diffs = [f"{k}: {stored[k]!r} -> {now.get(k)!r}" for k in RESUME_MUST_MATCH
                 if k in stored and stored[k] != now.get(k)]
        old_meta, new_meta = stored.get("meta") or {}, self.config.meta or {}
        diffs += [f"{k}: {old_meta[k]!r} -> {new_meta[k]!r}" for k in ("model", "data")
                  if old_meta.get(k) is not None and new_meta.get(k) is not None and old_meta[k] != new_meta[k]]
        if diffs:
            raise CheckpointError(f"resume: {path} was written with other settings ({'; '.join(diffs)}); resume with "
                                  "the same settings, or start a new run in another folder (its weights can seed it: "
                                  f"--checkpoint {path})")

    # ----------------------------------------------------------------------------- fault checks
    def _check_finite_weights(self, when):
        # Weights are the same on every rank (DDP), so all ranks raise together.
        if not all(bool(torch.isfinite(t).all()) for t in self.core.state_dict().values() if t.is_floating_point()):
            raise TrainingError(f"the model weights became NaN/Inf before {when} (epoch {self.epoch}); nothing was "
                                f"written, {self.checkpoint_path or 'the last checkpoint'} still holds the last good "
                                "epoch. Lower the learning rate or set grad_clip")

    def _finite_step(self, loss) -> bool:
        """After backward: True to take the optimizer step; False to skip it (on_nonfinite="skip"); or
        TrainingError. Gradients are already averaged over ranks here, so every rank decides the same."""
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        grads_ok = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        loss_ok = self.world > 1 or bool(torch.isfinite(loss).all())  # local loss: ranks could disagree
        if grads_ok and loss_ok:
            return True
        if self.config.on_nonfinite == "skip":
            self.optimizer.zero_grad(set_to_none=True)
            self._skipped = True
            return False
        what = "loss" if not loss_ok else "gradients"
        saved = (f"{self.checkpoint_path} (epoch {self.history[-1]['epoch']}) is intact" if self.history and
                 self.checkpoint_path else "no checkpoint was written")
        raise TrainingError(f"non-finite {what} (loss {float(loss.detach().float().mean()):.4g}) at epoch {self.epoch + 1}, "
                            f"step {self.step + 1}; training stopped and {saved}. Lower the learning rate, set "
                            "grad_clip, check the data, or skip such steps with on_nonfinite='skip' "
                            "(--on-nonfinite skip)")

    # ----------------------------------------------------------------------------- training
    def fit(self) -> TrainResult:
        cfg = self.config
        self._setup_distributed()
        try:
            if cfg.out_dir and self.is_main:  # before anything is written
                _io.check_out_dir(cfg.out_dir, flag="out_dir", overwrite=cfg.overwrite, existing_ok=bool(cfg.resume))
            self._seed()
            self._build_loader()
            self._prepare_model()
            cfg = self.config  # lr resolved to the optimizer's default
            self.epoch, self.step, self.history = 0, 0, []
            if cfg.resume:
                self._resume()
            elif cfg.out_dir and cfg.overwrite and self.is_main:
                _io.remove_outputs(cfg.out_dir, OUTPUT_FILES)  # no stale file of the earlier run stays
            log = MetricsLog(cfg, compress=self.comm_state is not None) if (cfg.out_dir and self.is_main) else None
            if log:
                _write_yaml(os.path.join(cfg.out_dir, "config.yaml"),
                            {**config_to_dict(cfg), "device": str(self.device),
                             "overwrite": False,  # a choice of that invocation: a rerun from this file must not inherit it
                             "meta": {**cfg.meta, "world_size": self.world}})
                log.reset(self.history)
            while self.epoch < cfg.epochs:
                row = self._train_epoch()
                self.epoch += 1
                last = self.epoch == cfg.epochs
                if self.eval_data is not None and (last or self.epoch % cfg.eval_every == 0) and self.is_main:
                    with _anchored(self.optimizer):  # FW mid inner loop: evaluate w_k, not the probe point
                        ev = evaluate(self.core, self.eval_data, loss=cfg.loss, batch_size=max(cfg.batch_size, 256),
                                      device=self.device, huber_delta=cfg.huber_delta)
                    row.update(eval_loss=ev["loss"], eval_accuracy=ev["accuracy"])
                self.history.append(row)
                if log:
                    log.append(row)
                if cfg.out_dir and (last or self.epoch % cfg.checkpoint_every == 0):
                    self._save()
                if cfg.progress and self.is_main:
                    tqdm.write(summary_line(row))
                self._barrier()
            if cfg.out_dir and self.is_main:
                self._check_finite_weights("saving model.pt")
                with _anchored(self.optimizer):
                    # a bare state_dict that create_model(checkpoint=) loads, written like every checkpoint
                    ckpt.save_checkpoint(os.path.join(cfg.out_dir, "model.pt"), self.core.state_dict(), tagged=False)
            return TrainResult(self.core, self.history, cfg, cfg.out_dir, self.checkpoint_path)
        finally:
            if self._owns_group:
                import gc

                import torch.distributed as dist

                # DDP (its reducer, the comm hook and its state) goes while the group is alive, then the group:
                # freed the other way round, a worker's Trainer teardown hung past the test's 300 s once in ~25
                # fresh-clone runs (faulthandler stack: at the return of fit(), after the job's last line)
                self.net = self.core
                gc.collect()
                dist.destroy_process_group()

    def _barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _train_epoch(self) -> dict:
        cfg, net = self.config, self.net
        self._set_epoch(self.epoch)
        net.train()
        t0, n, loss_sum, correct, has_acc = time.perf_counter(), 0, 0.0, 0, True
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this epoch ran with (the scheduler steps at its end)
        comm = {k: 0 for k in COMM_COUNTERS} if self.comm_state is not None else None
        skipped = 0
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and self.is_main))
        for batch in bar:
            self._skipped = False
            loss, out, y = self._train_step(batch)
            if comm is not None:
                if hasattr(self.comm_state, "observe_loss"):
                    self.comm_state.observe_loss(float(loss))  # adaptive compressors (MQGrad) learn from it
                for k, v in (self.comm_state.pop_stats() or {}).items():
                    # counters add up over the epoch; a setting such as the current bit width is last-value
                    comm[k] = comm.get(k, 0) + v if k in COMM_COUNTERS else v
            if self._skipped:  # a NaN/Inf step under on_nonfinite="skip": not applied, not averaged
                skipped += 1
                continue
            n += len(y)
            loss_sum += float(loss) * len(y)
            c = correct_count(out, y)
            has_acc = has_acc and c is not None
            correct += c or 0
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.3f}" if has_acc else "-", refresh=False)
        if self.scheduler is not None:
            self.scheduler.step()
        stats = torch.tensor([loss_sum, float(correct), float(n)], dtype=torch.float64)
        if self.world > 1:  # every rank saw a different shard: report the global means
            import torch.distributed as dist

            stats = stats.to(self.device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        seconds = time.perf_counter() - t0
        row = {"epoch": self.epoch + 1, "step": self.step, "lr": lr,
               "train_loss": float(stats[0] / stats[2]) if stats[2] else float("nan"),
               "train_accuracy": float(stats[1] / stats[2]) if has_acc and stats[2] else None,
               "eval_loss": None, "eval_accuracy": None, "epoch_time_s": seconds,
               "samples_per_s": float(stats[2]) / seconds, "nonfinite_steps": skipped}
        if comm is not None:
            row.update(comm)
        return row

    def _train_step(self, batch):
        if self.config.tbptt:
            return self._train_step_tbptt(batch)
        cfg, opt = self.config, self.optimizer
        x, y = batch[0].to(self.device, non_blocking=True), batch[1].to(self.device, non_blocking=True)
        idx = batch[2] if self.reweights else None
        weights = None
        if self.reweights:
            weights = torch.as_tensor(self.sampler.loss_weights(idx), dtype=torch.float32, device=self.device)

        def forward_backward():
            opt.zero_grad(set_to_none=True)
            out = self.net(x)
            return self._loss_backward(out, y, weights), out

        loss, out = forward_backward()
        if not self._finite_step(loss):
            return loss.detach(), out.detach(), y
        if self.reweights:
            # d(mean_i w_i l_i)/d(logits_i) = w_i/B * dl_i/d(logits_i): undo both to get ||dl_i/d(logits_i)||.
            g = out.grad.detach().flatten(1).norm(dim=1) * len(y) / weights.clamp_min(1e-12)
            self.sampler.update(idx, g.cpu())
        if self.needs_closure:
            # Gradients at the current point are already in p.grad; the optimizer calls the closure
            # for any further evaluation on the SAME mini-batch (e.g. SGD-G2's second stage).
            opt.step(lambda: forward_backward()[0])
        else:
            opt.step()
        self.step += 1
        return loss.detach(), out.detach(), y

    def _loss_backward(self, out, y, weights):
        """(Re-weighted) mean loss of ``out``; backward, then the configured gradient clipping."""
        cfg = self.config
        if self.reweights:
            out.retain_grad()
        per = per_sample_loss(cfg.loss, out, y, cfg.huber_delta)
        loss = (per * weights).mean() if weights is not None else per.mean()
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        return loss

    def _train_step_tbptt(self, batch):
        """Truncated BPTT: the sequence [N, T, ...] runs in chunks of ``tbptt`` steps from the carried (detached)
        hidden state, with one backward and one optimizer step per chunk. Per-step targets [N, T] are cut with the
        input; a per-sequence target is the loss target at every chunk end (as in the Frank-Wolfe authors' code)."""
        cfg, opt = self.config, self.optimizer
        if self.world > 1:
            raise ValueError("tbptt is not supported in distributed runs yet; drop tbptt or --nproc")
        if not hasattr(self.core, "forward_chunk"):
            raise ValueError(f"tbptt needs a model with forward_chunk(x, state) (e.g. rnn_classifier); "
                             f"{type(self.core).__name__} has none")
        x, y = batch[0].to(self.device), batch[1].to(self.device)
        idx = batch[2] if self.reweights else None
        weights = None
        if self.reweights:
            weights = torch.as_tensor(self.sampler.loss_weights(idx), dtype=torch.float32, device=self.device)
        steps = x.shape[1]
        per_step = y.dim() >= 2 and y.shape[1] == steps
        state = None
        for start in range(0, steps, int(cfg.tbptt)):
            xc = x[:, start:start + int(cfg.tbptt)]
            yc = y[:, start:start + int(cfg.tbptt)] if per_step else y
            state = _detach_state(state)

            def forward_backward(xc=xc, yc=yc, state=state):
                opt.zero_grad(set_to_none=True)
                out, new_state = self.core.forward_chunk(xc, state)
                return self._loss_backward(out, yc, weights), out, new_state

            loss, out, new_state = forward_backward()
            if not self._finite_step(loss):
                state = new_state
                continue
            if self.needs_closure:
                opt.step(lambda: forward_backward()[0])
            else:
                opt.step()
            state = new_state
            self.step += 1
        if self.reweights:  # the last chunk's ||dl_i/d(logits_i)||, as in the untruncated step
            g = out.grad.detach().flatten(1).norm(dim=1) * len(y) / weights.clamp_min(1e-12)
            self.sampler.update(idx, g.cpu())
        return loss.detach(), out.detach(), yc


def _detach_state(state):
    """A recurrent state (tensor, tuple of tensors such as LSTM's (h, c), or None) cut from the graph."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(_detach_state(s) for s in state)


def _anchored(optimizer):
    """``optimizer.anchor_weights()`` where it has one (Frank-Wolfe), else a no-op context."""
    return optimizer.anchor_weights() if hasattr(optimizer, "anchor_weights") else contextlib.nullcontext()


def _create_optimizer(cfg, params):
    from slimkit.train.optim import create_optimizer

    options = {**({"lr": cfg.lr} if cfg.lr is not None else {}), **cfg.optimizer_options}
    try:
        return create_optimizer(cfg.optimizer, params, **options)
    except TypeError as err:  # e.g. optimizer_options={"banana": 3}: name the option, not a traceback
        raise ValueError(f"optimizer {cfg.optimizer!r} does not accept options {sorted(cfg.optimizer_options)}: "
                         f"{err}") from None


def _write_yaml(path, data):
    import yaml

    _io.write_text(path, yaml.safe_dump(data, sort_keys=False))
