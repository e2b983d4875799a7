"""``build_model``: the model a training run starts from (a zoo name fitted to the data set's classes
and input size, or a user model), used by ``slimkit train`` and the demo."""


def build_model(name, splits, checkpoint=None, options=None):
    """Zoo model for ``splits``; ``num_classes`` is passed when the builder takes it; ``options``
    (``--model-opts``) go to the builder."""
    import inspect

    from slimkit.models import create_model, get_model_info

    if ":" in name:  # a user model: pkg.module:function, path/file.py:function or hf:DIR
        from slimkit.models.user import resolve_model

        return resolve_model(name, checkpoint).model
    info = get_model_info(name)  # ValueError naming the known models
    kwargs = {}
    if "num_classes" in inspect.signature(info.builder).parameters and getattr(splits, "num_classes", None):
        kwargs["num_classes"] = splits.num_classes
    data_size = tuple(getattr(splits, "input_size", ()) or ())
    if data_size and tuple(info.input_size) != data_size:
        raise ValueError(f"model {name!r} expects inputs of shape {tuple(info.input_size)} but the data set gives "
                         f"{data_size}; pick a model made for this data (or resize the data in its spec)")
    kwargs.update(options or {})
    return create_model(name, checkpoint=checkpoint, **kwargs)
