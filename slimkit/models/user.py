"""Models users have, by one ``--model`` spec for every command (compress, profile, train):

- a registered zoo name: ``resnet20``;
- ``pkg.module:function`` or ``path/to/file.py:function``: a callable returning an ``nn.Module``;
- ``hf:DIR``: a Hugging Face model from a local folder with its ``config.json`` (and weights, if the
  folder has them; otherwise random weights from the config). Nothing is downloaded
  (``local_files_only``); transformers is an optional dependency.

``resolve_model`` returns a :class:`UserModel`: the model plus what is known about its inputs, so a
command can build example inputs (``example_inputs``) without asking.
"""
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from slimkit.errors import SlimkitError


@dataclass
class UserModel:
    model: torch.nn.Module
    input_size: Optional[tuple] = None  # per-sample shape, e.g. (3, 32, 32)
    input_dtype: Optional[torch.dtype] = None
    input_name: Optional[str] = None  # keyword the model takes its input by (Hugging Face: pixel_values, input_ids)
    vocab_size: Optional[int] = None
    source: str = ""

    def example_inputs(self, batch=1, seq_len=16, seed=0):
        """Random example inputs of the right shape and dtype (token ids within the vocabulary)."""
        if self.input_size is None:
            return None
        gen = torch.Generator().manual_seed(seed)
        dtype = self.input_dtype or torch.float32
        shape = (batch, *self.input_size)
        if dtype.is_floating_point:
            x = torch.randn(shape, generator=gen).to(dtype)
        else:
            x = torch.randint(0, max(2, self.vocab_size or 2), shape, generator=gen, dtype=dtype)
        return {self.input_name: x} if self.input_name else x


def _load_callable(spec):
    target, _, fn_name = spec.rpartition(":")
    if not target or not fn_name:
        raise SlimkitError(f"--model {spec!r}: expected NAME, pkg.module:function, path/file.py:function or hf:DIR")
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise SlimkitError(f"--model {spec!r}: no file {target!r}")
        mod_name = f"_slimkit_user_{abs(hash(os.path.abspath(target)))}"
        loader = importlib.util.spec_from_file_location(mod_name, target)
        module = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - the user's file failed to import: say which and why
            raise SlimkitError(f"--model {spec!r}: importing {target!r} failed: {type(err).__name__}: {err}") from err
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # so a user's module in the cwd imports
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise SlimkitError(f"--model {spec!r}: cannot import module {target!r} ({err})") from err
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise SlimkitError(f"--model {spec!r}: {target!r} has no callable {fn_name!r}")
    return fn


def _hf(path):
    try:
        import transformers
    except ImportError as err:
        raise SlimkitError("--model hf:DIR needs Hugging Face transformers: pip install transformers") from err
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SlimkitError(f"--model hf:{path}: no config.json in {path!r} (a local Hugging Face model folder)")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        cls = transformers.AutoModel
    has_weights = any(os.path.exists(os.path.join(path, f)) for f in
                      ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"))
    if has_weights:
        model = cls.from_pretrained(path, local_files_only=True)
    else:
        model = cls.from_config(config) if cls is transformers.AutoModel else cls(config)
    image = getattr(config, "image_size", None)
    if image is not None and getattr(config, "num_channels", None):
        size = image if isinstance(image, (tuple, list)) else (image, image)
        return UserModel(model.eval(), (config.num_channels, *size), torch.float32, "pixel_values",
                         source=f"hf:{path}" + ("" if has_weights else " (random weights: no weights file)"))
    vocab = getattr(config, "vocab_size", None)
    return UserModel(model.eval(), (16,), torch.int64, "input_ids", vocab_size=vocab,
                     source=f"hf:{path}" + ("" if has_weights else " (random weights: no weights file)"))


def resolve_model(spec, checkpoint=None) -> UserModel:
    """The model named by ``spec`` (see module docstring), with ``checkpoint`` weights loaded if given."""
    from slimkit.models import create_model, get_model_info, list_models, load_checkpoint

    if spec.startswith("hf:"):
        user = _hf(spec[3:])
        if checkpoint:
            load_checkpoint(user.model, checkpoint)
        return user
    if ":" in spec:
        model = _load_callable(spec)()
        if not isinstance(model, torch.nn.Module):
            raise SlimkitError(f"--model {spec!r} must return a torch.nn.Module, got {type(model).__name__}")
        if checkpoint:
            load_checkpoint(model, checkpoint)
        return UserModel(model, source=spec)
    if spec not in list_models():
        get_model_info(spec)  # raises, naming the known models
    info = get_model_info(spec)
    return UserModel(create_model(spec, checkpoint=checkpoint), tuple(info.input_size), info.input_dtype, source=spec)
