"""Model zoo: ``create_model(name, **kwargs)``, ``list_models()``, ``register_model``.

The zoo's modules (lenet, resnet_cifar, mobilenet_v2, seesaw, efficientnet, rnn, nas) register their
models when the registry is first looked up (``slimkit.models._registry.MODELS``)."""
from slimkit.models._checkpoint import load_checkpoint, read_state_dict
from slimkit.models._registry import ModelInfo, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "load_checkpoint", "read_state_dict",
           "register_model"]
