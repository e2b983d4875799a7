"""Reading saved models without running code from the file: ``.pt2`` archives and ``.onnx`` models.

``torch.export.load`` is not safe on an untrusted file: it unpickles payloads marked ``use_pickle`` and
sample inputs with ``weights_only=False``, loads AOTInductor shared libraries, ``exec``s the archive's
``guards_code``, ``eval``s its symbolic expressions through ``sympy.sympify``, and generates Python code
from names and pytree specs in the graph JSON. No library reads the format safely, so
:func:`check_pt2` checks the whole archive against an allowlist first: the layout slimkit writes, no
pickled payload except sample inputs that load with ``weights_only=True``, operators from
``torch.ops.{aten,prims,quantized,...}`` and a few ``_operator``/``math`` functions, expressions and
guards made only of arithmetic on shapes, plain names. :func:`load_pt2` then loads the *same bytes*
with every ``torch.load`` forced to ``weights_only``. Anything outside the allowlist raises
:class:`CheckpointError` naming the file and what was refused.
"""
import ast
import contextlib
import io
import json
import keyword
import os
import re
import zipfile

import torch

from slimkit.errors import CheckpointError

_PLAIN = re.compile(r"^[A-Za-z0-9_.+\-]*$")  # names, dotted paths, versions
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # \r would end a generated comment line
_OP_NAMESPACES = ("aten", "prims", "quantized", "quantized_decomposed", "higher_order")
_OPERATOR_FNS = {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq",
                 "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift"}
_MATH_FNS = {"ceil", "floor", "trunc", "sqrt", "log2", "exp", "log"}
_TORCH_FNS = {"sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum", "sym_sqrt", "_sym_sqrt"}
# sympy constructors that srepr() emits plus torch.utils._sympy.functions (the deserializer's namespace).
_SYMPY_CALLS = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor", "ceiling",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan", "LessThan",
    "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair", "FloorDiv", "ModularIndexing", "Where",
    "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow",
    "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
}
_SYMPY_NAMES = {"true", "false", "oo", "zoo", "nan", "int_oo", "S", "pi", "E", "BooleanTrue", "BooleanFalse",
                "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "One", "Zero", "NegativeOne",
                "Half"}
_SYMBOL = re.compile(r"^[a-z]{1,6}[0-9]+$")  # s0, u3, zuf12: shape symbols
_GUARD_CALLS = {"IsNonOverlappingAndDenseIndicator", "cast_symbool_to_symint_guardless"}
_GUARD_METHODS = {"size", "stride", "storage_offset", "dim", "numel"}
_ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
          ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.BitAnd, ast.BitOr, ast.Invert)


class _Refused(Exception):
    pass


def _expr_nodes(text, what):
    if not isinstance(text, str) or len(text) > 20000:
        raise _Refused(f"{what} is not a short string")
    try:
        return ast.walk(ast.parse(text, mode="eval"))
    except SyntaxError:
        raise _Refused(f"{what} {text[:80]!r} does not parse") from None


def _is_plain_constant(node):
    return isinstance(node, ast.Constant) and (
        isinstance(node.value, (bool, int, float)) or node.value is None
        or (isinstance(node.value, str) and _PLAIN.match(node.value) is not None))


def check_sympy_expr(text, what="symbolic expression"):
    """Arithmetic on shape symbols in sympy's ``srepr`` form: calls only of allowlisted sympy names."""
    for node in _expr_nodes(text, what):
        if isinstance(node, (ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp)) or \
                isinstance(node, _ARITH) or _is_plain_constant(node):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS:
            continue
        if isinstance(node, ast.keyword) and node.arg and _PLAIN.match(node.arg):
            continue
        if isinstance(node, ast.Name) and (node.id in _SYMPY_CALLS or node.id in _SYMPY_NAMES or _SYMBOL.match(node.id)):
            continue
        raise _Refused(f"{what} {text[:80]!r} contains {type(node).__name__} "
                       f"{getattr(node, 'id', getattr(node, 'attr', ''))!r}, which is not shape arithmetic")


def check_guard(text):
    """A shape guard such as ``L['x'].size()[0] % 2 == 0``: arithmetic on input sizes and nothing else."""
    what = "guard"
    for node in _expr_nodes(text, what):
        if isinstance(node, (ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp,
                             ast.Subscript)) or isinstance(node, _ARITH) or _is_plain_constant(node):
            continue
        if isinstance(node, ast.Name) and (node.id in ("L", "inf", "math", "torch") or node.id in _GUARD_CALLS):
            continue
        if isinstance(node, ast.Attribute):
            root = node.value
            ok = (isinstance(root, ast.Name) and ((root.id == "math" and node.attr in _MATH_FNS)
                                                   or (root.id == "torch" and node.attr in _TORCH_FNS))) \
                or (node.attr in _GUARD_METHODS and isinstance(root, ast.Subscript))
            if ok:
                continue
        if isinstance(node, ast.Call) and not node.keywords and (
                isinstance(node.func, ast.Attribute) or (isinstance(node.func, ast.Name) and node.func.id in _GUARD_CALLS)):
            continue  # the callee itself was checked as an Attribute or a Name
        raise _Refused(f"guard {text[:80]!r} contains {type(node).__name__} "
                       f"{getattr(node, 'id', getattr(node, 'attr', ''))!r}, which is not shape arithmetic")


def check_target(target):
    """Node targets resolve to ATen/prims/quantized operators or a few operator/math/sym functions."""
    if not isinstance(target, str):
        raise _Refused(f"operator {target!r} is not allowed")
    parts = target.split(".")
    if parts[:2] == ["torch", "ops"] and len(parts) in (4, 5) and parts[2] in _OP_NAMESPACES and \
            all(p.isidentifier() for p in parts[3:]):
        # ATen has dunder op names (aten.__and__.Tensor), so check what the name resolves to: an operator,
        # never a Python attribute such as __class__.
        obj = torch.ops
        for p in parts[2:]:
            obj = getattr(obj, p, None)
        if isinstance(obj, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
            return
        raise _Refused(f"operator {target!r} is not a registered operator")
    if any(p.startswith("__") for p in parts):
        raise _Refused(f"operator {target!r} is not allowed")
    if len(parts) == 2 and ((parts[0] == "_operator" and parts[1] in _OPERATOR_FNS)
                            or (parts[0] == "math" and parts[1] in _MATH_FNS)
                            or (parts[0] == "torch" and parts[1] in _TORCH_FNS)):
        return
    raise _Refused(f"operator {target!r} is not an ATen/prims/quantized operator or an allowed function")


def _check_treespec(text, what):
    try:
        spec = json.loads(text)
    except (TypeError, ValueError):
        raise _Refused(f"{what} is not a JSON tree spec") from None

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key == "context" and isinstance(value, str):
                    walk_context(value)
                elif key == "type" and value is not None:
                    if not isinstance(value, str) or not _PLAIN.match(value):
                        raise _Refused(f"{what} has type {value!r}")
                else:
                    walk(value)
        elif isinstance(node, str) and not _PLAIN.match(node):
            raise _Refused(f"{what} holds {node[:60]!r}")

    def walk_context(text):
        try:
            ctx = json.loads(text)
        except ValueError:
            raise _Refused(f"{what} has a context that is not JSON") from None
        for item in ctx if isinstance(ctx, list) else [ctx]:
            # dict keys end up inside generated code ("'key': value"): identifiers only.
            if not (item is None or isinstance(item, (int, float)) or (isinstance(item, str) and _PLAIN.match(item))):
                raise _Refused(f"{what} has a context entry {str(item)[:60]!r}")

    walk(spec)


def _check_json(node, path="", free_text=False):
    """Walk the model JSON: every string is plain unless it is free text, an expression, a guard or a spec."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str) or _CONTROL.search(key) or not (free_text or _PLAIN.match(key)):
                raise _Refused(f"key {str(key)[:60]!r} at {path or '/'}")
            here = f"{path}/{key}"
            if key == "metadata" or key in ("as_string", "as_strings"):
                _check_json(value, here, free_text=True)  # comments / repr()'d arguments in generated code
            elif key == "target" and "inputs" in node and "outputs" in node:
                check_target(value)
            elif key == "expr_str":
                check_sympy_expr(value)
            elif key == "guards_code":
                for guard in value or []:
                    check_guard(guard)
            elif key == "range_constraints" and isinstance(value, dict):
                for name in value:
                    check_sympy_expr(name, "range constraint")
                _check_json(list(value.values()), here)
            elif key in ("in_spec", "out_spec") and isinstance(value, str):
                _check_treespec(value, key)
            elif key == "forward_arg_names":
                if not all(isinstance(n, str) and n.isidentifier() and not keyword.iskeyword(n) for n in value or []):
                    raise _Refused(f"forward_arg_names {value!r} are not all Python identifiers")
            else:
                _check_json(value, here, free_text)
    elif isinstance(node, list):
        for item in node:
            _check_json(item, path, free_text)
    elif isinstance(node, str):
        if _CONTROL.search(node) or not (free_text or _PLAIN.match(node)):
            raise _Refused(f"string {node[:60]!r} at {path}")


def _read_json(zf, name):
    try:
        return json.loads(zf.read(name))
    except (ValueError, UnicodeDecodeError) as err:
        raise _Refused(f"{name} is not JSON ({err})") from None


def _check_payload_config(zf, name, constants):
    config = _read_json(zf, name).get("config", {})
    if not isinstance(config, dict):
        raise _Refused(f"{name} has no config mapping")
    for fqn, meta in config.items():
        if not isinstance(meta, dict) or meta.get("use_pickle"):
            raise _Refused(f"{fqn!r} in {name} is a pickled payload")
        path_name = meta.get("path_name", "")
        prefix_ok = path_name.startswith("tensor_") if constants else True
        if not (isinstance(path_name, str) and _PLAIN.match(path_name) and prefix_ok):
            raise _Refused(f"{fqn!r} in {name} is stored as {path_name!r} (custom or opaque objects are pickles)")
    _check_json(config, name)


def check_pt2(data: bytes, path) -> None:
    """Raise CheckpointError unless the ``.pt2`` bytes are an archive slimkit can load without running code."""
    try:
        _check_pt2(data)
    except _Refused as why:
        raise CheckpointError(f"refused to load {path}: {why}; slimkit loads only plain torch.export archives "
                              "(graph of ATen operators, raw tensor weights, no pickled objects)") from None
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path} is not a readable torch.export .pt2 archive (not a zip file)") from None


def _check_pt2(data):
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = zf.namelist()
    if len(set(names)) != len(names):
        raise _Refused("the archive repeats an entry name")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise _Refused("expected one top-level folder (torch.export.save layout of torch >= 2.6)")
    root = roots.pop() + "/"
    rel = [n[len(root):] for n in names]
    if "archive_version" not in rel:
        raise _Refused("no archive_version (an older or foreign format)")
    models = [r for r in rel if r.startswith("models/")]
    if not models:
        raise _Refused("no models/*.json graph")
    for r in rel:
        head = r.split("/", 1)[0]
        fixed = r in ("archive_format", "archive_version", "byteorder") or head in (".data", "extra")
        model = r.startswith("models/") and r.endswith(".json") and r.count("/") == 1
        payload = (r.startswith(("data/weights/", "data/constants/")) and r.count("/") == 2
                   and not r.endswith((".pt", ".pkl")))  # legacy pickled weight/constant files
        sample = r.startswith("data/sample_inputs/") and r.endswith(".pt") and r.count("/") == 2
        if not (fixed or model or payload or sample):
            raise _Refused(f"unexpected entry {r!r} (e.g. AOTInductor shared libraries are native code)")
    for r in models:
        name = r[len("models/"):-len(".json")]
        if not _PLAIN.match(name):
            raise _Refused(f"model name {name!r}")
        _check_json(_read_json(zf, root + r), r)
        for cfg, constants in ((f"data/weights/{name}_weights_config.json", False),
                               (f"data/constants/{name}_constants_config.json", True)):
            if root + cfg in names:
                _check_payload_config(zf, root + cfg, constants)
        sample = root + f"data/sample_inputs/{name}.pt"
        if sample in names and zf.getinfo(sample).file_size:
            try:
                torch.load(io.BytesIO(zf.read(sample)), weights_only=True)
            except Exception as err:  # noqa: BLE001 - any failure means it is not plain tensors
                raise _Refused(f"sample inputs are not plain tensors ({type(err).__name__})") from None


@contextlib.contextmanager
def _weights_only_loads():
    """Every torch.load inside, including torch.export's weights_only=False fallbacks, is weights_only."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_pt2(path):
    """The module of a checked ``.pt2`` archive (see module docstring); CheckpointError if refused."""
    with open(path, "rb") as f:
        data = f.read()  # check and load the same bytes: no swap between the two
    check_pt2(data, path)
    try:
        with _weights_only_loads():
            return torch.export.load(io.BytesIO(data)).module()
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged archive
        raise CheckpointError(f"{path} is not a readable torch.export .pt2 archive: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err


def check_onnx(data: bytes, path) -> None:
    """An ONNX model that parses and keeps all weights inside the file (external data would make ONNX
    Runtime read other files named by the model)."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        return  # onnxruntime still refuses garbage below
    try:
        model = onnx.load_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise CheckpointError(f"{path} is not an ONNX model ({type(err).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise CheckpointError(f"{path} is not an ONNX model (no graph)")
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    if any(uses_external_data(t) for t in tensors):
        raise CheckpointError(f"refused to load {path}: it refers to external data files; slimkit loads only "
                              "self-contained .onnx models")
