"""Train a small zoo model on the built-in digits data, profile it, compress it (about a minute on 2 CPU cores).

The steps are ``slimkit.demo.STEPS``, run by ``slimkit.demo.run_demo``.
"""
import os


def add_arguments(parser):
    parser.add_argument("--out", default=os.path.join("runs", "demo"), help="output directory (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--quick", action="store_true", help="at most 3 epochs, for tests and smoke runs")
    parser.add_argument("--model", default="lenet5", help="zoo model to train (default lenet5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    from slimkit.demo import run_demo

    run_demo(args.out, epochs=args.epochs, quick=args.quick, model=args.model, seed=args.seed,
             progress=not args.no_progress, overwrite=args.overwrite)
    return 0
