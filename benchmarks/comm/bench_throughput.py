"""Compressor throughput vs this machine's memory bandwidth, 1 thread.

    python benchmarks/comm/bench_throughput.py [--sizes 61706,1000000,25000000] [--repeats 5]

The limit: GB/s of fp32 input that ``dst.copy_(src)`` (memcpy) and ``torch.add(a, b, out=c)`` move
on one core, on buffers of the largest size (out of cache). Per compressor and size: median time of
``compress`` (encode) and ``decompress`` (decode) of one gradient-like vector (Gaussian, a few
large outliers), as values/s and GB/s of fp32 input for encode + decode, and that as a share of
the memcpy limit. Target (issue 13): encode + decode >= 25% of the limit per core at 25 M values.
Output: throughput.md and throughput.json in --out.
"""
import argparse
import json
import os
import statistics
import sys
import time

SPECS = ["qsgd(bits=4)", "ecq(bits=2)", "lpc(bits=4)", "qsgd(bits=4, coding='dense')",
         "ecq(bits=2, coding='dense')", "identity"]


def _median(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), (min(ts), max(ts))


def bandwidth(n, repeats):
    import torch

    a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
    copy = _median(lambda: c.copy_(a), repeats)[0]
    add = _median(lambda: torch.add(a, b, out=c), repeats)[0]
    return {"memcpy_GBps": 4 * n / copy / 1e9, "add_GBps": 4 * n / add / 1e9}


def measure(spec, n, repeats):
    import torch

    import slimkit.comm as comm

    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 1e-3
    x[:: max(n // 100, 1)] *= 30  # a few outliers, as real gradients have
    c = comm.parse_compressor(spec)
    c.bind(0)
    segs = [("w", n)]
    enc, enc_spread = _median(lambda: c.compress(x, segs), repeats)
    payload = c.compress(x, segs)
    dec, dec_spread = _median(lambda: c.decompress(payload, n), repeats)
    return {"spec": spec, "n": n, "encode_s": enc, "decode_s": dec, "encode_range": enc_spread,
            "decode_range": dec_spread, "payload_bytes": payload.numel(),
            "values_per_s": n / (enc + dec), "GBps": 4 * n / (enc + dec) / 1e9}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="61706,1000000,25000000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--specs", default=";".join(SPECS), help="';'-separated compressor specs")
    p.add_argument("--out", default="benchmarks/results/comm")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    bw = bandwidth(max(sizes), args.repeats)
    rows = [measure(spec, n, args.repeats) for n in sizes for spec in args.specs.split(";")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    vnni = "avx512_vnni" in open("/proc/cpuinfo").read() or "avx_vnni" in open("/proc/cpuinfo").read()
    lines = [f"# Compressor throughput vs memory bandwidth (1 thread, torch {torch.__version__})\n",
             f"CPU: {cpu} ({'VNNI' if vnni else 'no VNNI'}), load average at the end "
             f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}. Limit on {max(sizes):,} floats: memcpy "
             f"{bw['memcpy_GBps']:.2f} GB/s, torch.add {bw['add_GBps']:.2f} GB/s (of one fp32 input).\n",
             "| compressor | values | encode ms | decode ms | payload B | M values/s (enc+dec) | GB/s fp32 | "
             "% of memcpy | % of add |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['spec']}` | {r['n']:,} | {1e3 * r['encode_s']:.2f} | {1e3 * r['decode_s']:.2f} | "
                     f"{r['payload_bytes']:,} | {r['values_per_s'] / 1e6:.1f} | {r['GBps']:.3f} | "
                     f"{100 * r['GBps'] / bw['memcpy_GBps']:.1f}% | {100 * r['GBps'] / bw['add_GBps']:.1f}% |")
    big = [r for r in rows if r["n"] == max(sizes) and r["spec"] != "identity"]
    if big:
        best = max(big, key=lambda r: r["GBps"])
        lines.append(f"\nTarget (encode + decode >= 25% of memcpy per core at {max(sizes):,} values): best is "
                     f"`{best['spec']}` at {100 * best['GBps'] / bw['memcpy_GBps']:.1f}% -> "
                     f"{'met' if best['GBps'] >= 0.25 * bw['memcpy_GBps'] else 'NOT met'}.")
    md = "\n".join(lines) + f"\n\nCommand: `python benchmarks/comm/bench_throughput.py {' '.join(sys.argv[1:])}`\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "throughput.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump({"bandwidth": bw, "rows": rows, "cpu": cpu}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
