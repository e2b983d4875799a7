"""Model zoo: ``create_model(name, **kwargs)``, ``list_models()``, ``register_model``."""
import importlib

from slimkit.models._checkpoint import load_checkpoint, read_state_dict
from slimkit.models._registry import ModelInfo, create_model, get_model_info, list_models, register_model

# Each module registers its models on import.
for _name in ("lenet", "resnet_cifar", "mobilenet_v2", "seesaw", "efficientnet", "rnn", "nas"):
    try:
        importlib.import_module(f"slimkit.models.{_name}")
    except ModuleNotFoundError as _err:
        if _err.name != f"slimkit.models.{_name}":
            raise

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "load_checkpoint", "read_state_dict",
           "register_model"]
