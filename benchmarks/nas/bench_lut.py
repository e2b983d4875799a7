"""The per-block latency look-up table vs whole-network measurements (run under an exclusive CPU lock).

Builds the table for the ``seesaw`` space (every block of the covering set, timed with slimkit.profile,
interleaved in chunks), calibrates its one scale factor on ``--calib-archs`` sampled whole networks,
then times OTHER whole networks (sampled architectures and the zoo's MobileNetV2 / Seesaw-Net at several
widths, interleaved round-robin) and reports the error of the calibrated estimate and of the raw block
sum on each. Writes the table (reused by bench_search.py) and lut_check.json / lut_check.md:

    /work/tools/cpujob exclusive -- python benchmarks/nas/bench_lut.py --runtime eager --threads 1
    python benchmarks/nas/bench_lut.py --report      # rewrite lut_check_*.md from its json (times nothing)
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import loo_scale_errors  # noqa: E402

from slimkit.models import create_model  # noqa: E402
from slimkit.nas import get_space  # noqa: E402
from slimkit.nas.cost import LatencyLUT  # noqa: E402
from slimkit.profile import compare_latency, make_runner  # noqa: E402
from slimkit.profile.analysis import cpu_name  # noqa: E402
from slimkit.report.table import to_markdown  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "nas")
ZOO_WIDTHS = (0.35, 0.5, 0.75, 1.0)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="seesaw")
    p.add_argument("--runtime", default="eager")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--check-archs", type=int, default=20)
    p.add_argument("--calib-archs", type=int, default=8)
    p.add_argument("--out", default=OUT)
    p.add_argument("--report", action="store_true", help="only rewrite the .md from the saved json")
    return p.parse_args(argv)


def main(args):
    torch.set_num_threads(args.threads)
    space = get_space(args.space)
    tag = f"{args.runtime}_{args.threads}t"
    path = os.path.join(args.out, f"lut_{args.space}_{tag}.json")
    t0 = time.time()
    lut = LatencyLUT(space, args.runtime, args.threads, 1, warmup=5, repeats=args.repeats)
    n = lut.measure(space.covering(space), progress=True)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(args.check_archs)]
    crng, calib = random.Random(1), []
    while len(calib) < args.calib_archs:  # calibration networks: none of them is checked
        a = space.sample(crng)
        if a not in archs and a not in calib:
            calib.append(a)
    lut.calibrate(calib, repeats=args.repeats)
    lut.save(path)
    build_s = time.time() - t0
    mnv2 = space.parse("seesaw:w1/1x1k3dense/2x6k3dense/3x6k3dense/4x6k3dense/3x6k3dense/3x6k3dense/1x6k3dense")
    rows = lut.check(archs + [mnv2], repeats=args.repeats)
    rows[-1]["note"] = "= zoo mobilenet_v2 (width 1)"
    for r in rows:
        r["raw_error_pct"] = 100.0 * (r["block_sum_ms"] - r["measured_ms"]) / r["measured_ms"]
    errs = [abs(r["error_pct"]) for r in rows]
    raw = [abs(r["raw_error_pct"]) for r in rows]
    # the zoo's hand-made networks at several widths, timed interleaved (the search benchmark's baselines)
    x = torch.randn(1, 3, 32, 32)
    zoo = {}
    for w in ZOO_WIDTHS:
        zoo[f"mobilenet_v2 w{w:g}"] = create_model("mobilenet_v2", width_mult=w)
        zoo[f"seesaw_net w{w:g}"] = create_model("seesaw_net", width_mult=w)
    calls = {k: (lambda r=make_runner(m.eval(), (x,), args.runtime, threads=args.threads): r(x)) for k, m in zoo.items()}
    stats = compare_latency(calls, (), warmup=5, repeats=args.repeats, threads=args.threads)
    zoo_rows = [{"model": k, "median_ms": s.median_ms, "iqr_ms": s.iqr_ms, "load1": s.loadavg[0]} for k, s in stats.items()]
    result = {"cpu": cpu_name(), "torch": torch.__version__, "runtime": args.runtime, "threads": args.threads,
              "batch_size": 1, "blocks_measured": n, "lut_entries": len(lut.entries), "lut_build_s": build_s,
              "median_abs_error_pct": statistics.median(errs), "max_abs_error_pct": max(errs),
              "mean_error_pct": statistics.fmean(r["error_pct"] for r in rows), "scale": lut.scale,
              "calib_archs": len(calib), "raw_median_abs_error_pct": statistics.median(raw),
              "raw_mean_error_pct": statistics.fmean(r["raw_error_pct"] for r in rows), "rows": rows, "zoo": zoo_rows,
              "loadavg": os.getloadavg(), "lut_file": os.path.relpath(path, ROOT)}
    with open(os.path.join(args.out, f"lut_check_{args.space}_{tag}.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = [f"LUT vs whole network, space {args.space}, {args.runtime}, {args.threads} thread(s), batch 1, "
          f"{cpu_name()}, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}",
          f"median |error| {result['median_abs_error_pct']:.1f}%, max {result['max_abs_error_pct']:.1f}%, "
          f"mean signed {result['mean_error_pct']:+.1f}% over {len(rows)} networks (scale {lut.scale:.3f} calibrated on "
          f"{len(calib)} other networks); raw block sum: median |error| {result['raw_median_abs_error_pct']:.1f}%, "
          f"mean signed {result['raw_mean_error_pct']:+.1f}%", "",
          to_markdown(rows, ["spec", ("lut_ms", "LUT ms"), ("measured_ms", "measured ms"), ("error_pct", "error %"),
                             ("block_sum_ms", "block sum ms"), ("raw_error_pct", "raw error %")]),
          "", to_markdown(zoo_rows, ["model", ("median_ms", "median ms"), ("iqr_ms", "IQR ms")])]
    with open(os.path.join(args.out, f"lut_check_{args.space}_{tag}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md[:2]))
    for r in zoo_rows:
        print(r)


def report(args):
    """lut_check_*.md from lut_check_*.json. A json from before calibration (no "scale") holds the raw block
    sum as lut_ms; its table then also gets the leave-one-out calibrated error (the scale of the other
    networks), labelled as such: an estimate of what calibration gives, not a run of it."""
    tag = f"{args.runtime}_{args.threads}t"
    with open(os.path.join(args.out, f"lut_check_{args.space}_{tag}.json")) as f:
        res = json.load(f)
    rows = res["rows"]
    calibrated = "scale" in res
    block = [r.get("block_sum_ms", r["lut_ms"]) for r in rows]
    loo = loo_scale_errors(block, [r["measured_ms"] for r in rows])
    for r, b, e in zip(rows, block, loo):
        r["block_sum_ms"], r["raw_error_pct"], r["loo_error_pct"] = b, 100.0 * (b - r["measured_ms"]) / r["measured_ms"], e
    raw = [abs(r["raw_error_pct"]) for r in rows]
    la = [abs(e) for e in loo]
    head = [f"LUT vs whole network, space {args.space}, {res['runtime']}, {res['threads']} thread(s), batch "
            f"{res['batch_size']}, {res['cpu']}, torch {res['torch']}, load {res['loadavg'][0]:.2f}; "
            f"{res['lut_entries']} blocks; {len(rows)} whole networks timed interleaved (slimkit.profile.compare_latency)"]
    if calibrated:
        head.append(f"calibrated (scale {res['scale']:.3f} on {res['calib_archs']} other networks): median |error| "
                    f"{res['median_abs_error_pct']:.1f}%, max {res['max_abs_error_pct']:.1f}%")
    else:
        head.append("this run predates calibration: LUT ms = the raw block sum (scale 1)")
    head.append(f"raw block sum: median |error| {statistics.median(raw):.1f}%, max {max(raw):.1f}%, mean signed "
                f"{statistics.fmean(r['raw_error_pct'] for r in rows):+.1f}%")
    head.append(f"leave-one-out scale (median measured/block-sum ratio of the other {len(rows) - 1} networks, computed "
                f"from these rows, no new timing): median |error| {statistics.median(la):.1f}%, max {max(la):.1f}%, "
                f"mean signed {statistics.fmean(loo):+.1f}%")
    md = head + ["", to_markdown(rows, ["spec", ("measured_ms", "measured ms"), ("block_sum_ms", "block sum ms"),
                                        ("raw_error_pct", "raw error %"), ("loo_error_pct", "LOO-scaled error %")]
                                 + ([("lut_ms", "LUT ms"), ("error_pct", "error %")] if calibrated else [])),
                 "", to_markdown(res["zoo"], ["model", ("median_ms", "median ms"), ("iqr_ms", "IQR ms")])]
    with open(os.path.join(args.out, f"lut_check_{args.space}_{tag}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(head))


if __name__ == "__main__":
    a = parse()
    report(a) if a.report else main(a)
