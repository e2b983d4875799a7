"""The per-epoch metrics log: ``metrics.csv`` / ``metrics.jsonl`` in the run's folder (each rewritten whole and
atomically every epoch) and the one-line epoch summary the trainer prints."""
import csv
import io
import json
import math
import os

from slimkit import _io

COMM_COUNTERS = ("bytes_sent", "compress_s", "comm_s", "hook_calls")  # gradient-compression counters per epoch


class MetricsLog:
    """metrics.csv and metrics.jsonl in out_dir, rewritten from the history on (re)start."""

    COLUMNS = ["epoch", "step", "lr", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy",
               "epoch_time_s", "samples_per_s", "nonfinite_steps"]

    def __init__(self, cfg, compress=False):
        os.makedirs(cfg.out_dir, exist_ok=True)
        self.formats = cfg.log_formats
        self.columns = self.COLUMNS + (list(COMM_COUNTERS) + ["bits"] if compress else [])
        self.paths = {f: os.path.join(cfg.out_dir, "metrics." + f) for f in self.formats}
        self.rows = []

    def reset(self, history):
        # Rows after the resumed checkpoint are dropped: those epochs run again.
        self.rows = list(history)
        self._write()

    def append(self, row):
        self.rows.append(row)
        self._write()

    def _write(self):
        # Whole small files rewritten atomically each epoch: a crash never leaves a torn row.
        if "csv" in self.paths:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in self.rows)
            _io.write_text(self.paths["csv"], buf.getvalue())
        if "jsonl" in self.paths:
            _io.write_text(self.paths["jsonl"], "".join(
                json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n" for row in self.rows))


def _json_safe(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def summary_line(row):
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    if row.get("train_accuracy") is not None:
        parts.append(f"train_acc {row['train_accuracy']:.4f}")
    if row.get("eval_loss") is not None:
        parts.append(f"eval_loss {row['eval_loss']:.4f}")
    if row.get("eval_accuracy") is not None:
        parts.append(f"eval_acc {row['eval_accuracy']:.4f}")
    parts.append(f"{row['samples_per_s']:.0f} samples/s")
    return " | ".join(parts)
