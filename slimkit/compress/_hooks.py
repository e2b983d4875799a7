"""What layers see, recorded with temporary forward hooks (recovery passes fit layers to it):
``run_hooked`` runs a model once with hooks and removes them, ``record_layer_io`` collects the inputs
(and outputs) of named layers over batches, ``execution_order`` names layers in the order of their first call."""
import torch

from slimkit.model_io import Example


def run_hooked(model, x, handles):
    """``model(x)`` without gradients (``x(model)`` for an ``Example``); the hook ``handles`` are removed
    afterwards, even on error."""
    try:
        with torch.no_grad():
            return x(model) if isinstance(x, Example) else model(x)
    finally:
        for h in handles:
            h.remove()


def record_layer_io(model, names, batches, outputs=False):
    """``(inputs, outputs)``: ``{name: [first positional input of each call, ...]}`` over ``batches`` (each a
    tensor, a tuple of positional inputs, a dict or an ``Example``), and the same for the layer outputs when
    ``outputs`` (else ``{}``). A layer that never ran has no key. No gradients; hooks are always removed."""
    ins, outs, handles = {}, {}, []
    for name in names:
        def hook(m, args, out, name=name):
            ins.setdefault(name, []).append(args[0].detach())
            if outputs:
                outs.setdefault(name, []).append(out.detach())
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                Example.of(b)(model)
    finally:
        for h in handles:
            h.remove()
    return ins, outs


def execution_order(model, example_inputs, keep):
    """Names of the modules for which ``keep(module)`` holds, in the order of their first call on
    ``example_inputs`` (a tensor, tuple, dict or ``Example``)."""
    order = []
    handles = [m.register_forward_pre_hook(lambda m, a, n=n: order.append(n)) for n, m in model.named_modules()
               if keep(m)]
    run_hooked(model, Example.of(example_inputs), handles)
    return list(dict.fromkeys(order))
