"""The compression report: before/after size, MACs, measured latency, accuracy and per-pass rows."""
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class ModelStats:
    macs: int
    params: int
    weight_bytes: int
    accuracy: Optional[float] = None  # top-1 on eval_data, in [0, 1]


@dataclass
class PassRow:
    name: str
    config: str  # the pass in recipe-string form
    lossless: bool
    seconds: float
    stats: ModelStats
    check: str  # what was checked after the pass, e.g. "forward ok; max |diff| 3e-07 (rtol 1e-5)"
    target: Optional[dict] = None  # a pass aiming at a target (budget): {"metric", "target", "achieved", "met"}


@dataclass
class CompressReport:
    recipe: str
    before: ModelStats
    after: ModelStats
    passes: list = field(default_factory=list)
    latency: dict = field(default_factory=dict)  # f"{model}@b{batch}" -> interleaved timing dict
    notes: list = field(default_factory=list)
    targets_met: Optional[bool] = None  # None: no pass aimed at a target; False: at least one missed its target

    def missed_targets(self):
        """The pass rows whose target was not met (their model is the closest the pass got)."""
        return [r for r in self.passes if r.target is not None and not r.target["met"]]

    def to_dict(self):
        return asdict(self)

    def speedup(self, batch, before="before", after="after"):
        a, b = self.latency.get(f"{before}@b{batch}"), self.latency.get(f"{after}@b{batch}")
        return a["median_ms"] / b["median_ms"] if a and b else None

    def to_markdown(self):
        def acc(s):
            return "-" if s.accuracy is None else f"{100 * s.accuracy:.2f}"

        lines = [f"## slimkit compress report\n\nRecipe: `{self.recipe}`\n"]
        for r in self.passes:
            if r.target is not None:
                t = r.target
                verdict = "met" if t["met"] else "**MISSED**: the model is the closest the pass got"
                lines.append(f"Target of `{r.config}`: {t['metric']} <= {t['target']:,.6g}, achieved "
                             f"{t['achieved']:,.6g}: {verdict}\n")
        lines += ["| | MACs | params | weight bytes | top-1 % |", "|---|---:|---:|---:|---:|"]
        for label, s in (("before", self.before), ("after", self.after)):
            lines.append(f"| {label} | {s.macs:,} | {s.params:,} | {s.weight_bytes:,} | {acc(s)} |")
        b, a = self.before, self.after
        lines.append(f"| ratio | {b.macs / max(a.macs, 1):.2f}x | {b.params / max(a.params, 1):.2f}x | "
                     f"{b.weight_bytes / max(a.weight_bytes, 1):.2f}x | |")
        lines += ["\n### Passes\n", "| pass | lossless | seconds | MACs | params | weight bytes | top-1 % | check |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in self.passes:
            lines.append(f"| `{r.config}` | {r.lossless} | {r.seconds:.2f} | {r.stats.macs:,} | {r.stats.params:,} | "
                         f"{r.stats.weight_bytes:,} | {acc(r.stats)} | {r.check} |")
        if self.latency:
            lines += ["\n### Measured latency (interleaved, median [p25, p75] ms)\n",
                      "| model@batch | median ms | p25 | p75 | runs | load avg (1/5/15 min) |",
                      "|---|---:|---:|---:|---:|---|"]
            for key, t in self.latency.items():
                load = "/".join(f"{x:.2f}" for x in t["loadavg"])
                lines.append(f"| {key} | {t['median_ms']:.3f} | {t['p25_ms']:.3f} | {t['p75_ms']:.3f} | {t['n']} | {load} |")
        lines += [f"\n- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"
