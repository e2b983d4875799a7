"""Graph capture for the structural passes: ``torch.export`` (non-strict) on the example inputs.

Export runs the model's Python for real (on fake tensors), so ordinary control flow on shapes and
Python values, keyword inputs and structured outputs (Hugging Face ``ModelOutput``) all work; only
branches on tensor *values* cannot be captured, and then we refuse with a clear error. The ATen graph
keeps module provenance (``nn_module_stack``) and names every parameter and buffer by its fully
qualified name, which is what surgery on the original ``nn.Module`` needs. Symbolic ``torch.fx``
tracing, used before, failed on most third-party models.
"""
import warnings
from dataclasses import dataclass, field

import torch

from slimkit.errors import SlimkitError
from slimkit.model_io import Example, FlatModule

_PREFIX = "model."


class GraphError(SlimkitError):
    """The model has a pattern the channel graph cannot handle; the message names module and op."""


@dataclass
class Capture:
    """An exported graph of ``model`` on one example: ``graph`` (ATen fx graph), ``params``/``buffers``:
    placeholder name -> fully qualified name in the user's model, ``inputs``: user-input placeholders,
    ``program``: the ExportedProgram (to run the graph on other inputs)."""

    model: torch.nn.Module
    example: Example
    program: object
    graph: torch.fx.Graph
    params: dict = field(default_factory=dict)
    buffers: dict = field(default_factory=dict)
    constants: set = field(default_factory=set)
    inputs: list = field(default_factory=list)

    def owner(self, node):
        """Fully qualified name of the innermost module whose forward ran ``node`` ('' = the top)."""
        stack = node.meta.get("nn_module_stack")
        if not stack:
            return ""
        fqn = list(stack.values())[-1][0]
        return fqn[len(_PREFIX):] if fqn.startswith(_PREFIX) else ("" if fqn == "model" else fqn)

    def owners(self, node):
        """All module FQNs on ``node``'s stack, outermost first."""
        stack = node.meta.get("nn_module_stack") or {}
        out = []
        for fqn, _ in stack.values():
            fqn = fqn[len(_PREFIX):] if fqn.startswith(_PREFIX) else ("" if fqn == "model" else fqn)
            if fqn:
                out.append(fqn)
        return out

    def tensor_name(self, node):
        """FQN of the parameter or buffer a placeholder holds, else None."""
        return self.params.get(node.name) or self.buffers.get(node.name)

    def run(self, example: Example, wanted):
        """Values of the graph nodes named in ``wanted`` on ``example`` (same structure as the capture;
        other input shapes get their own export, since an exported graph is specialised to its shapes)."""
        tensors = example.tensors()
        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        cache = self.__dict__.setdefault("_programs", {})
        if key not in cache:
            same = key == tuple((tuple(t.shape), t.dtype) for t in self.example.tensors())
            program = self.program if same else _export(self.model, example, self._output)
            cache[key] = program.module()
        rec = _Recorder(cache[key], set(wanted))
        with torch.no_grad():
            rec.run(*tensors)
        missing = set(wanted) - set(rec.seen)
        if missing:
            raise GraphError(f"nodes {sorted(missing)[:4]} do not exist in the graph captured for inputs "
                             f"{example.describe()}; use calibration batches of the example's shape")
        return rec.seen


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm, wanted):
        super().__init__(gm)
        self.wanted, self.seen = wanted, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted and torch.is_tensor(out):
            self.seen[n.name] = out.detach()
        return out


def _hint(err):
    text = str(err)
    if "data-dependent" in text or "GuardOnDataDependent" in type(err).__name__ or "Could not guard" in text:
        return ("its forward branches on tensor values (data-dependent control flow, e.g. `if x.sum() > 0`), "
                "so no single graph holds for every input; rewrite the branch with torch.where/torch.cond")
    return "see the first line above"


def _export(model, example, output):
    flat = FlatModule(model, example, output).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.export.export(flat, tuple(example.tensors()), strict=False)
    except Exception as err:  # noqa: BLE001 - export raises many types; name the model and the reason
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GraphError(f"torch.export could not capture {type(model).__name__}: {first[:300]} -- "
                         f"{_hint(err)}. Structural passes (prune, fold) need a captured graph; "
                         "lowrank, pq and int8 do not.") from err


def capture(model, example_inputs, output=None) -> Capture:
    """Export ``model`` (eval mode; the caller passes a copy if it will be edited) on the example."""
    example = Example.of(example_inputs)
    program = _export(model, example, output)
    cap = Capture(model, example, program, program.graph)
    cap._output = output
    strip = (lambda s: s[len(_PREFIX):] if s.startswith(_PREFIX) else s)
    from torch.export.graph_signature import InputKind
    for spec in program.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.PARAMETER:
            cap.params[name] = strip(spec.target)
        elif spec.kind == InputKind.BUFFER:
            cap.buffers[name] = strip(spec.target)
        elif spec.kind == InputKind.USER_INPUT:
            cap.inputs.append(name)
        else:
            cap.constants.add(name)
    return cap
