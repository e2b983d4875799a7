"""``TrainConfig``: every setting of a training run, checked when built, round-tripped through dicts
(``config_to_dict`` / ``config_from_dict``) and saved as ``config.yaml`` beside the run's outputs;
``parse_options`` reads the option strings of ``optimizer_options`` / ``sampler_options`` (``--optim-opts``)."""
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from slimkit.train.losses import LOSSES

SCHEDULES = ("none", "cosine", "step")
LOG_FORMATS = ("csv", "jsonl")
NONFINITE_POLICIES = ("raise", "skip")
# Settings a resumed run must share with its checkpoint; the others (epochs, eval/checkpoint cadence,
# device, workers, progress, on_nonfinite) may change between the two.
RESUME_MUST_MATCH = ("batch_size", "lr", "optimizer", "optimizer_options", "loss", "huber_delta", "lr_schedule",
                     "lr_step_size", "lr_gamma", "grad_clip", "seed", "sampler", "sampler_options", "memory_budget",
                     "memory_pack", "compress", "tbptt")


@dataclass
class TrainConfig:
    """Everything that decides a training run. Round-trips through ``config_to_dict``/``config_from_dict``."""

    epochs: int = 10
    batch_size: int = 64
    lr: Optional[float] = None  # None: the optimizer's own default (sgd 0.01, adam 1e-3); resolved and saved
    optimizer: str = "sgd"
    optimizer_options: dict = field(default_factory=dict)  # extra kwargs for create_optimizer
    loss: str = "ce"  # "ce" | "mse" | "huber" (torch.nn.HuberLoss); mse/huber one-hot class targets
    huber_delta: float = 1.0
    lr_schedule: str = "none"  # "none" | "cosine" (over `epochs`) | "step" (x lr_gamma every lr_step_size)
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    grad_clip: Optional[float] = None  # max global L2 norm of the gradients
    tbptt: Optional[int] = None  # truncated BPTT: chunk length in time steps (dim 1); needs model.forward_chunk
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when available, else CPU
    out_dir: Optional[str] = None  # None: no files, no checkpoints
    overwrite: bool = False  # allow a non-empty out_dir (its earlier outputs are removed first)
    on_nonfinite: str = "raise"  # NaN/Inf loss or gradients: "raise" stops the run, "skip" drops that step
    checkpoint_every: int = 1  # epochs; the last epoch is always checkpointed when out_dir is set
    eval_every: int = 1  # epochs; the last epoch is always evaluated
    log_format: str = "csv,jsonl"  # metrics files written to out_dir
    sampler: Optional[str] = None  # name in slimkit.train.sampling; None = uniform shuffle
    sampler_options: dict = field(default_factory=dict)
    memory_budget: Optional[Union[str, int]] = None  # e.g. "2GB", "512MiB" or bytes
    memory_pack: Optional[str] = None  # "bf16" | "fp16": the budget may keep activations in 16 bits (lossy backward)
    compress: Optional[str] = None  # gradient compressor spec for DDP runs, e.g. "ecq(bits=2)"
    progress: bool = True
    resume: Union[bool, str] = False  # True: out_dir/checkpoint.pt; a str: that checkpoint
    num_workers: int = 0
    meta: dict = field(default_factory=dict)  # provenance saved with the config (model, data, ...)
    version: int = 1

    def __post_init__(self):
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        for fmt in self.log_formats:
            _check_choice("log_format", fmt, LOG_FORMATS)
        for name in ("epochs", "batch_size", "checkpoint_every", "eval_every", "lr_step_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.lr is not None and not self.lr > 0:  # `not >` also catches NaN
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        _check_choice("on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        check_device(self.device)
        if not isinstance(self.optimizer_options, dict) or not isinstance(self.sampler_options, dict):
            raise ValueError("optimizer_options and sampler_options must be mappings of option names to values")
        if self.tbptt is not None and int(self.tbptt) < 1:
            raise ValueError(f"tbptt (chunk length in time steps) must be a positive integer or None, got {self.tbptt!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if self.memory_budget is not None:
            parse_size(self.memory_budget)  # fail early on a malformed size
        if self.memory_pack not in (None, "bf16", "fp16"):
            raise ValueError(f"memory_pack must be None, 'bf16' or 'fp16', got {self.memory_pack!r}")

    @property
    def log_formats(self):
        return [f.strip() for f in str(self.log_format).split(",") if f.strip()]


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(choices)}")


def check_device(device):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; a GPU that is not there is an error, not a traceback."""
    m = re.fullmatch(r"(auto|cpu|mps|cuda)(?::(\d+))?", str(device))
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda, cuda:N or mps")
    if m.group(1) == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available here (torch.cuda.is_available() is False); "
                             "use --device cpu or auto")
        if m.group(2) is not None and int(m.group(2)) >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if m.group(1) == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu or auto")


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(data: dict) -> TrainConfig:
    """Build a TrainConfig from a dict; unknown keys raise ValueError naming the known ones."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown train config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return TrainConfig(**data)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size) -> int:
    """Bytes in ``size``: an int, or a string like "2GB" (10^9), "512MiB" (2^20), "1.5 GiB"."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"bad memory size {size!r}; expected a positive number with an optional unit "
                         f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '2GB' or '512MiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_options(text, what="--optim-opts"):
    """'momentum=0.9,nesterov=true' -> {'momentum': 0.9, 'nesterov': True}: the inside of a spec's parentheses
    in slimkit's option grammar (slimkit.registry, as in recipes and ``--optim 'sgd(momentum=0.9)'``).

    Before, these flags read each value as a YAML scalar. Where YAML reads a value as something other than
    a string and the grammar reads it otherwise (yes/no/on/off, ~, an empty value, [lists], dates), or the
    text is not in the grammar at all (a trailing comma), the YAML reading is kept, with a DeprecationWarning
    saying how to write it. A value YAML read as a string and the grammar as a number or none (1e-3, nan,
    none) takes the grammar's reading: no option wanted those strings."""
    if isinstance(text, dict):
        return dict(text)
    from slimkit.registry import parse_options as parse_grammar

    text = str(text)
    legacy, legacy_error = _yaml_options(text, what)
    try:
        options = parse_grammar(text, what)
    except ValueError as err:
        if legacy is None:
            raise ValueError(f"{legacy_error or err}; expected FIELD=VALUE pairs separated by commas, VALUE: "
                             f"int, float, true/false, none, 'string', (tuple) or word") from None
        _warn_yaml(what, text, f"is not in slimkit's option grammar ({err})")
        return legacy
    for key, value in (legacy or {}).items():
        new = options.get(key, _MISSING)
        if not isinstance(value, str) and not (type(new) is type(value) and new == value):
            _warn_yaml(what, f"{key}={value!r}", f"reads {new!r} in slimkit's option grammar; write "
                                                 f"{key}={_grammar_text(value)}")
            options[key] = value
    return options


_MISSING = object()


def _yaml_options(text, what):
    """The old reading (comma-separated key=value, each value a YAML scalar): (options, None) or (None, error)."""
    import yaml

    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            return None, f"bad {what} item {item!r}"
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            return None, f"bad {what} item {item!r}"
    return out, None


def _grammar_text(value):
    from slimkit.registry import format_value

    if isinstance(value, list):
        value = tuple(value)
    return format_value(value) if isinstance(value, (bool, int, float, tuple, type(None))) else repr(str(value))


def _warn_yaml(what, text, why):
    import warnings

    warnings.warn(f"{what} {text} {why}; its YAML reading is used for now and will stop working",
                  DeprecationWarning, stacklevel=4)
