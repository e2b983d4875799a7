"""CPU cost per function-matching step of distill's options, interleaved (issue 16, round 12).

    python benchmarks/compress/bench_match_step.py --train ../shared/data/cifar10_train.npz \
        --checkpoint ../shared/data/resnet20_cifar10.th --rounds 3

Each round runs every variant for ``--steps`` steps on bench_fewshot's 10 images per class (draw 0; block-output
MSE weight 40, batch 64, 1 torch thread) and records process CPU time per step; rounds interleave the variants so that load on a
shared machine hits them alike. Prints the median [min, max] per variant and its ratio to ``frozen``.
"""
import argparse
import copy
import statistics
import time

import torch

from bench_fewshot import splits, teacher as load_teacher

VARIANTS = {"frozen": {}, "bn=train": {"bn": "train"}, "anchor=0.01": {"anchor": 0.01}, "adv=0.1": {"adv": 0.1}}


def main():
    from slimkit.compress.matching import MatchSettings, function_matching

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="../shared/data/cifar10_train.npz")
    ap.add_argument("--checkpoint", default="../shared/data/resnet20_cifar10.th")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = load_teacher(args.checkpoint)
    (x, _), _ = splits(args.train, k=10)
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # a student that differs from the teacher, as after pruning
        for p in student.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    per_step = {k: [] for k in VARIANTS}
    for r in range(args.rounds):
        for name, kw in VARIANTS.items():
            s = copy.deepcopy(student)
            t0 = time.process_time()
            function_matching(s, teacher, x, MatchSettings(steps=args.steps, features=40, feature_at="blocks", **kw),
                              torch.Generator().manual_seed(r))
            per_step[name].append((time.process_time() - t0) / args.steps * 1000)
    base = statistics.median(per_step["frozen"])
    print(f"torch {torch.__version__}, 1 thread, {args.rounds} rounds x {args.steps} steps")
    for name, v in per_step.items():
        m = statistics.median(v)
        print(f"{name:12s} {m:7.1f} ms/step [{min(v):.1f}, {max(v):.1f}]  {m / base:.2f}x frozen")


if __name__ == "__main__":
    main()
