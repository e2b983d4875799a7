"""Train a zoo model on a data set, with checkpoints, resume, metrics logs and optional DDP.

Settings come from TrainConfig defaults, then ``--config YAML`` (the ``config.yaml`` a run saves is a
valid one), then the flags given on the command line. ``--nproc N`` re-launches this command under
``torch.distributed.run`` with N processes on this host (gloo on CPU, nccl on CUDA); the same works by
hand: ``torchrun --nproc_per_node N -m slimkit.cli train ...``.
"""
import argparse
import os
import sys

# (flag, dest, type, help); every default is SUPPRESS so only flags actually given override the YAML.
_OPTIONS = [
    ("--model", "model", str, "zoo model name (slimkit.models.list_models()), pkg.module:function, "
                              "path/file.py:function or hf:DIR"),
    ("--model-opts", "model_options", str, "model builder options FIELD=VALUE,..., e.g. spec=OUT/best_spec.json for "
                                          "--model nas (slimkit search)"),
    ("--data", "data", str, "data set spec for slimkit.data.load_dataset, e.g. digits or cifar10:PATH"),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--batch-size", "batch_size", int, "mini-batch size per process"),
    ("--lr", "lr", float, "learning rate"),
    ("--optim", "optimizer", str, "optimizer name (slimkit.train.optim.list_optimizers())"),
    ("--optim-opts", "optimizer_options", str, "optimizer options FIELD=VALUE,... in the option grammar of recipes, "
                                                "e.g. momentum=0.9,nesterov=true,betas=(0.9,0.99)"),
    ("--lr-schedule", "lr_schedule", str, "none | cosine | step"),
    ("--loss", "loss", str, "ce | mse | huber"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient L2 norm to this value"),
    ("--on-nonfinite", "on_nonfinite", str, "NaN/Inf loss or gradients: raise (stop, the default) | skip (drop the "
                                            "step, counted in the log)"),
    ("--sampler", "sampler", str, "mini-batch sampler name (slimkit.train.sampling)"),
    ("--sampler-opts", "sampler_options", str, "sampler options FIELD=VALUE,..., e.g. mixture=0.3,period=5"),
    ("--memory-budget", "memory_budget", str, "training memory budget, e.g. 2GB or 512MiB"),
    ("--memory-pack", "memory_pack", str, "bf16 | fp16: the budget may keep activations in 16 bits where that is "
                                          "cheaper than recomputing them (gradients within the rounding)"),
    ("--compress", "compress", str, "gradient compressor for DDP runs, e.g. 'ecq(bits=2)'"),
    ("--seed", "seed", int, "random seed"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N"),
    ("--out", "out_dir", str, "output directory (default runs/train/MODEL)"),
    ("--checkpoint", "checkpoint", str, "initial model weights to load before training"),
    ("--checkpoint-every", "checkpoint_every", int, "save a checkpoint every N epochs"),
    ("--eval-every", "eval_every", int, "evaluate on the held-out split every N epochs"),
    ("--num-workers", "num_workers", int, "DataLoader worker processes"),
    ("--nproc", "nproc", int, "data-parallel processes on this host (re-launches under torchrun)"),
    ("--timeout", "timeout", float, "seconds any collective may wait for a peer before the job stops (default 600)"),
    ("--max-restarts", "max_restarts", int, "restart the workers up to K times after one fails, from the last "
                                            "complete checkpoint (torchrun c10d rendezvous)"),
    ("--config", "config", str, "YAML file of settings (TrainConfig keys plus model, data, checkpoint)"),
]
_FLAGS = [("--resume", "resume", "continue from OUT/checkpoint.pt (the last complete epoch)"),
          ("--overwrite", "overwrite", "replace the results of an earlier run in --out (default: refuse)"),
          ("--no-progress", "no_progress", "no progress bars")]
_RUN_KEYS = ("model", "data", "checkpoint", "nproc", "model_options", "timeout", "max_restarts")  # the command's, not TrainConfig's


def add_arguments(parser):
    for flag, dest, typ, text in _OPTIONS:
        parser.add_argument(flag, dest=dest, type=typ, default=argparse.SUPPRESS, help=text)
    for flag, dest, text in _FLAGS:
        parser.add_argument(flag, dest=dest, action="store_true", default=argparse.SUPPRESS, help=text)


def parse_options(text, what="--optim-opts"):
    """``slimkit.train.config.parse_options``, deferred: building the parser does not import torch."""
    from slimkit.train.config import parse_options as parse

    return parse(text, what)


def resolve_settings(args) -> dict:
    """Defaults < --config YAML < command-line flags; returns one flat dict."""
    import yaml

    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    settings = {}
    if "config" in given:
        path = given.pop("config")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--config {path!r}: no such YAML file")
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path!r} must hold a mapping of settings, got {type(loaded).__name__}")
        meta = dict(loaded.get("meta") or {})
        for key in _RUN_KEYS:  # a saved config.yaml keeps these under meta
            if key in meta and key not in loaded:
                loaded[key] = meta[key]
        meta.pop("world_size", None)
        loaded["meta"] = meta
        settings.update(loaded)
    if given.pop("no_progress", False):
        given["progress"] = False
    settings.update(given)
    for key in ("optimizer_options", "sampler_options"):
        if key in settings:
            settings[key] = parse_options(settings[key], "--" + key.replace("optimizer", "optim").replace("_options", "-opts"))
    return settings


def _relaunch(args, nproc, max_restarts=0, timeout=None) -> int:
    """Run this very command again under torch.distributed.run with ``nproc`` processes."""
    from slimkit.train import launch

    argv = []
    for flag, dest, _typ, _text in _OPTIONS:
        if dest not in ("nproc", "max_restarts") and dest in vars(args):
            argv += [flag, str(getattr(args, dest))]
    argv += [flag for flag, dest, _ in _FLAGS if getattr(args, dest, False)]
    cmd = launch.torchrun_command(nproc, max_restarts, ["slimkit.cli", "train", *argv])
    print("launching:", " ".join(cmd), flush=True)
    env = {**os.environ, **({launch.TIMEOUT_ENV: str(timeout)} if timeout else {})}
    return launch.run_forwarding(cmd, env)


def run(args) -> int:
    from slimkit.train.trainer import config_from_dict, fit

    settings = resolve_settings(args)
    run_opts = {k: settings.pop(k) for k in _RUN_KEYS if k in settings}
    model_name, data_spec = run_opts.get("model"), run_opts.get("data", "digits")
    if not model_name:
        raise ValueError("slimkit train needs --model NAME (or 'model:' in --config)")
    nproc = int(run_opts.get("nproc") or 1)
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    from slimkit.train import launch

    if run_opts.get("timeout") is not None:  # workers: bound every collective (read at init_process_group)
        os.environ[launch.TIMEOUT_ENV] = str(launch.check_timeout(run_opts["timeout"]))
    if int(run_opts.get("max_restarts") or 0) < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {run_opts['max_restarts']}")
    settings.setdefault("out_dir", os.path.join("runs", "train", model_name))
    launch.restart_resume(settings, settings["out_dir"])  # restarted by torchrun: from the last checkpoint
    settings["meta"] = {**settings.get("meta", {}), "model": model_name, "data": data_spec,
                        "checkpoint": run_opts.get("checkpoint"), "model_options": run_opts.get("model_options")}
    # Everything that can be checked without the data is checked here, before torchrun starts workers
    # (one line and exit code 2, not a worker traceback) and before the data is read.
    config = config_from_dict(settings)
    _check_optimizer(config.optimizer, config.optimizer_options)
    from slimkit.models import get_model_info

    get_model_info(model_name)
    if config.compress:
        from slimkit.comm import parse_compressor

        parse_compressor(config.compress)
    if int(os.environ.get("RANK", "0")) == 0:
        from slimkit._io import check_out_dir

        check_out_dir(config.out_dir, flag="--out", overwrite=config.overwrite, existing_ok=bool(config.resume))
    if nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _relaunch(args, nproc, int(run_opts.get("max_restarts") or 0), run_opts.get("timeout"))
    from slimkit.data import load_dataset

    splits = load_dataset(data_spec)
    dropped = (getattr(splits, "meta", None) or {}).get("dropped")
    if dropped and int(os.environ.get("RANK", "0")) == 0:
        from slimkit.data.validate import dropped_text

        print(f"data: {dropped_text(dropped)}", flush=True)
    import torch

    from slimkit.train.build import build_model

    torch.manual_seed(config.seed)  # the model's initial weights depend on the seed too
    model = build_model(model_name, splits, run_opts.get("checkpoint"),
                        parse_options(run_opts.get("model_options") or "", "--model-opts"))
    try:
        result = fit(model, splits.train, splits.test, config)
    except RuntimeError as err:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and launch.is_peer_failure(err):
            from slimkit.cli import EXIT_ERROR, debugging, print_error
            from slimkit.errors import SlimkitError

            stop = SlimkitError(f"distributed training stopped: a peer process froze or died (no answer within "
                                f"--timeout {launch.collective_timeout().total_seconds():.0f} s): "
                                f"{str(err).splitlines()[0][:200]}")
            if debugging(args):
                raise stop from err
            print_error("train", stop)
            sys.stdout.flush()
            # Leave at once: a normal exit runs the process group's destructors, which can wait forever on the
            # frozen peer's half-done send (seen under load: the job outlived --timeout by minutes); torchrun
            # then reports this rank's exit code and stops the others.
            os._exit(EXIT_ERROR)
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.final
        acc = last.get("eval_accuracy")
        acc_text = f"held-out accuracy {acc:.4f}" if acc is not None else f"held-out loss {last.get('eval_loss')}"
        print(f"trained {model_name} on {data_spec} for {last.get('epoch')} epochs: {acc_text}; "
              f"outputs in {config.out_dir}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun worker whose outputs are written (fsynced) leaves without interpreter teardown: the
        # destructors of the gloo group's threads are what can hang a finished job (see Trainer.fit)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _check_optimizer(name, options=None):
    """Unknown optimizer names and options fail here, before any data is read."""
    import torch

    from slimkit.train.optim import OPTIMIZERS, create_optimizer

    OPTIMIZERS.get(name)  # an unknown name raises, listing the known ones
    try:  # a throw-away parameter: options are checked by the optimizer itself
        create_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], **(options or {}))
    except TypeError as err:
        raise ValueError(f"--optim-opts {options}: optimizer {name!r} rejects them ({err})") from None
    except ValueError as err:
        raise ValueError(f"--optim-opts {options}: {err}") from None

