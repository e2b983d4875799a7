"""Training: ``slimkit.train(model, train_data, eval_data, config)`` runs :func:`fit`.

``TrainConfig`` holds every setting; ``TrainResult`` has the model and per-epoch metrics.
Checkpoints are atomic and resumable (``resume=True``); see ``slimkit.train.checkpoint``.
"""
from slimkit._callable import make_module_callable
from slimkit.train.checkpoint import load_checkpoint, save_checkpoint
from slimkit.train.optim import create_optimizer, list_optimizers, register_optimizer
from slimkit.train.trainer import (TrainConfig, Trainer, TrainResult, config_from_dict, config_to_dict, evaluate,
                                   fit, parse_size)

__all__ = ["TrainConfig", "TrainResult", "Trainer", "fit", "evaluate", "config_to_dict", "config_from_dict",
           "parse_size", "save_checkpoint", "load_checkpoint", "create_optimizer", "list_optimizers",
           "register_optimizer"]

make_module_callable(__name__, fit)
