"""Model zoo: ``create_model(name, **kwargs)``, ``list_models()``, ``register_model``."""
from slimkit.models._registry import ModelInfo, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
