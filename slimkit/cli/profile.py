"""Profile a model: MACs, params, weight bytes, peak activations and measured latency.

Examples::

    slimkit profile --model resnet20                      # registry input size, batch 1
    slimkit profile --model resnet20 --compare resnet56 --runtime eager,onnxruntime
    slimkit profile --model mypkg.nets:build_net --input 1x3x64x64 --json prof.json
    slimkit profile --model path/to/nets.py:build --input 1x3x64x64
    slimkit profile --model hf:path/to/local_hf_folder      # config.json (+ weights); nothing is downloaded
"""

from slimkit.errors import ShapeError


def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="zoo model name, pkg.module:function or path/file.py:function returning an nn.Module, "
                             "or hf:DIR (a local Hugging Face model folder)")
    parser.add_argument("--input", default=None,
                        help="input shape(s), batch first, e.g. 1x3x32x32 (several: 1x3x32x32,1x10); "
                             "default: the zoo model's input size at batch 1")
    parser.add_argument("--dtype", default=None, help="input dtype (default: the zoo model's, else float32)")
    parser.add_argument("--checkpoint", default=None, help="weights to load into --model")
    parser.add_argument("--compare", default=None, metavar="OTHER_MODEL",
                        help="a second model (same forms as --model) shown side by side with ratios B/A")
    parser.add_argument("--compare-checkpoint", default=None, help="weights to load into --compare")
    parser.add_argument("--compare-input", default=None,
                        help="input shape(s) for --compare (default: --input, else its zoo size, else --model's inputs)")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes to time (default 1,64; "
                                                              "'none' counts only)")
    parser.add_argument("--threads", default="1,all", help="CPU thread settings, e.g. 1,all (default)")
    parser.add_argument("--runtime", default="eager",
                        help="registered runtimes, comma-separated (shipped: eager, onnxruntime, compile; "
                             "more with slimkit.profile.register_runtime)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per setting (default 20)")
    parser.add_argument("--depth", type=int, default=2, help="module tree depth in the table (default 2)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the profile(s) as JSON to OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_shapes(text):
    try:
        shapes = [tuple(int(d) for d in part.lower().split("x")) for part in text.split(",")]
    except ValueError:
        raise ShapeError(f"--input must look like 1x3x32x32 (several inputs: 1x3x32x32,1x10), got {text!r}") from None
    if any(not s or min(s) < 1 for s in shapes):
        raise ShapeError(f"--input dimensions must be positive integers, got {text!r}")
    return shapes


def _fmt(shape):
    return "x".join(map(str, shape))


def build_model(spec, checkpoint=None):
    """``(model, input size or None, input dtype or None, keyword name or None)`` for a zoo name,
    ``module:function``, ``file.py:function`` or ``hf:DIR`` (``slimkit.models.user.resolve_model``)."""
    from slimkit.models.user import resolve_model

    user = resolve_model(spec, checkpoint)
    return user.model, user.input_size, user.input_dtype, user.input_name


def _example_inputs(spec, input_text, dtype_text, input_size, input_dtype, fallback=None, input_name=None):
    import torch

    if input_text:
        shapes = _parse_shapes(input_text)
    elif input_size is not None:
        shapes = [(1, *input_size)]
    elif fallback is not None:  # --compare with a user model: same inputs as --model
        return fallback
    else:
        raise ShapeError(f"--model {spec}: give the input shape with --input, e.g. --input 1x3x32x32")
    dtype = getattr(torch, dtype_text, None) if dtype_text else (input_dtype or torch.float32)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"--dtype must be a torch dtype name such as float32 or int64, got {dtype_text!r}")
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        xs = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    else:  # token ids / indices: small values are valid for any vocabulary
        xs = [torch.randint(0, 2, s, generator=gen, dtype=dtype) for s in shapes]
    if input_name and len(xs) == 1:  # Hugging Face models take pixel_values= / input_ids=
        return {input_name: xs[0]}
    return xs[0] if len(xs) == 1 else tuple(xs)


def _shape_hint(spec, input_size, err):
    if input_size is None:
        return err
    return ShapeError(f"{spec} expects input Bx{_fmt(input_size)} (e.g. --input 1x{_fmt(input_size)}); {err}")


def _prepare(spec, checkpoint, input_text, dtype_text, fallback=None):
    from slimkit.profile.analysis import _check_forward, resize_batch

    model, size, dtype, name = build_model(spec, checkpoint)
    inputs = _example_inputs(spec, input_text, dtype_text, size, dtype, fallback, name)
    try:
        _check_forward(model.eval(), resize_batch(inputs, 1), spec)
    except ShapeError as err:
        raise _shape_hint(spec, size, err) from None
    return model, inputs


def _settings(args):
    text = args.batch_sizes.strip().lower()
    try:
        batches = () if text in ("", "none", "0") else tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ValueError(f"--batch-sizes must be comma-separated integers such as 1,64, got {args.batch_sizes!r}") from None
    from slimkit.train.trainer import check_device

    check_device(args.device)  # --device banana: one line, not torch's RuntimeError
    return dict(batch_sizes=batches, threads=tuple(t.strip() for t in args.threads.split(",")),
                runtime=tuple(r.strip() for r in args.runtime.split(",")), warmup=args.warmup, repeats=args.repeats,
                device=args.device, progress=not args.no_progress)


def run(args) -> int:
    import json

    from slimkit.profile import compare_table, profile, profile_pair

    from slimkit._io import check_out_file, write_text

    kw = _settings(args)
    if args.json:
        check_out_file(args.json, flag="--json")  # before any work: not a folder, writable
    _check_input_memory(args, kw["batch_sizes"])
    model, inputs = _prepare(args.model, args.checkpoint, args.input, args.dtype)
    if args.compare is None:
        prof = profile(model, inputs, name=args.model, **kw)
        print(prof.table(depth=args.depth))
        if args.json:
            write_text(args.json, prof.to_json() + "\n")
            print(f"wrote {args.json}")
        return 0
    other, other_inputs = _prepare(args.compare, args.compare_checkpoint, args.compare_input or args.input, args.dtype,
                                   fallback=inputs)
    a, b = profile_pair(model, inputs, other, other_inputs, names=(args.model, args.compare), **kw)
    print(a.table(depth=args.depth) + "\n\n" + b.table(depth=args.depth) + "\n\n" + compare_table(a, b))
    if args.json:
        from slimkit.profile.compare import compare_rows

        write_text(args.json, json.dumps({"a": a.to_dict(), "b": b.to_dict(), "comparison": compare_rows(a, b)}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _available_memory():
    """MemAvailable from /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_input_memory(args, batch_sizes):
    """Refuse inputs that cannot fit in memory up front: allocating them would fail after the counting
    work, or get the process killed by the kernel with no message at all."""
    import math

    import torch

    if not args.input:
        return
    avail = _available_memory()
    if avail is None:
        return
    dtype = getattr(torch, args.dtype, None) if args.dtype else torch.float32
    itemsize = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 4
    shapes = _parse_shapes(args.input)
    largest = max([s[0] for s in shapes] + list(batch_sizes or [1]))
    need = sum(math.prod(s[1:]) * max(largest, s[0]) * itemsize for s in shapes)
    if need > avail:
        raise ShapeError(f"--input {args.input} at batch {largest} needs {need / 2**30:.1f} GiB for the inputs alone, "
                         f"but only {avail / 2**30:.1f} GiB of memory is available; use a smaller --input or "
                         "--batch-sizes")
