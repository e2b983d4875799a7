"""Random and evolutionary search over a space, under a cost budget, resumable.

Evolution (SPOS-style): a feasible random population; each generation keeps the top ``parents``
of everything evaluated so far and breeds ``mutations`` mutants and ``crossovers`` crossovers from
them, each feasible and not seen before. Random search draws the same number of feasible
candidates. Candidates that break the budget are never evaluated. After every generation the whole
state (evaluations, next population, RNG) is written to ``state_path``; a run started again with the
same settings continues from it and follows the same trajectory.
"""
import json
import os
import random
from dataclasses import asdict, dataclass, field

from slimkit.nas.space import parse_spec

STRATEGIES = ("evolution", "random")


@dataclass
class SearchConfig:
    strategy: str = "evolution"
    population: int = 16
    generations: int = 8
    parents: int = 8
    mutations: int = 8
    crossovers: int = 8
    mutation_prob: float = 0.1
    seed: int = 0
    max_tries: int = 500  # draws to find one feasible, unseen candidate before giving up on that slot
    version: int = 1

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown search strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        for name in ("population", "generations", "parents"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def evaluations(self) -> int:
        """Candidates evaluated by a full run (random search gets the same number)."""
        return self.population + (self.generations - 1) * (self.mutations + self.crossovers)


@dataclass
class SearchResult:
    history: list  # one row per evaluated candidate, in order: generation, spec, accuracy, costs
    budget: dict
    config: SearchConfig
    rejected: int = 0  # candidates drawn that broke the budget
    extra: dict = field(default_factory=dict)

    @property
    def best(self) -> dict:
        return max(self.history, key=lambda r: r["accuracy"])

    def top(self, k=10) -> list:
        return sorted(self.history, key=lambda r: -r["accuracy"])[:k]


def _rng_to_json(state):
    return [state[0], list(state[1]), state[2]]


def _rng_from_json(state):
    return (state[0], tuple(state[1]), state[2])


class Search:
    """``Search(space, evaluate, cost, budget, config, state_path).run()``; ``evaluate(arch) -> accuracy``,
    ``cost`` a CostModel (or any ``arch -> dict`` with a ``feasible(arch, budget)``)."""

    def __init__(self, space, evaluate, cost, budget, config: SearchConfig = None, state_path=None, on_save=None):
        self.space, self.evaluate, self.cost, self.on_save = space, evaluate, cost, on_save
        self.budget, self.config, self.state_path = dict(budget or {}), config or SearchConfig(), state_path
        self.rng = random.Random(self.config.seed)
        self.history, self.seen, self.rejected = [], set(), 0
        self.generation, self.population = 0, []

    # ------------------------------------------------------------------ candidates
    def _feasible(self, arch):
        if not self.budget:
            return True
        ok = self.cost.feasible(arch, self.budget)
        self.rejected += not ok
        return ok

    def _draw(self, make, pending):
        for _ in range(self.config.max_tries):
            arch = make()
            key = arch.encode()
            if key in self.seen or key in pending:
                continue
            if self._feasible(arch):
                return arch
        return None

    def _random_batch(self, n):
        out = {}
        for _ in range(n):
            arch = self._draw(lambda: self.space.sample(self.rng), out)
            if arch is None:
                break
            out[arch.encode()] = arch
        return list(out.values())

    def _children(self):
        cfg = self.config
        parents = [parse_spec(r["spec"]) for r in sorted(self.history, key=lambda r: -r["accuracy"])[:cfg.parents]]
        out = {}
        for _ in range(cfg.mutations):
            arch = self._draw(lambda: self.space.mutate(self.rng.choice(parents), self.rng, cfg.mutation_prob), out)
            if arch is not None:
                out[arch.encode()] = arch
        for _ in range(cfg.crossovers):
            if len(parents) < 2:
                break
            arch = self._draw(lambda: self.space.crossover(*self.rng.sample(parents, 2), self.rng), out)
            if arch is not None:
                out[arch.encode()] = arch
        return list(out.values())

    def _next_population(self):
        cfg = self.config
        if cfg.strategy == "random":
            return self._random_batch(cfg.mutations + cfg.crossovers)
        return self._children()

    # ------------------------------------------------------------------ run / state
    def run(self, progress=True, stop_after=None) -> SearchResult:
        """Run to ``config.generations`` (or ``stop_after`` more generations), resuming from the state file."""
        from tqdm import tqdm

        cfg = self.config
        self.load()
        if self.generation == 0 and not self.population:
            self.population = self._random_batch(cfg.population)
        bar = tqdm(total=cfg.generations, initial=self.generation, desc=f"{cfg.strategy} search",
                   disable=not progress, leave=False)
        done = 0
        while self.generation < cfg.generations and self.population and (stop_after is None or done < stop_after):
            for arch in self.population:
                key = arch.encode()
                self.seen.add(key)
                row = {"generation": self.generation, "spec": key, "accuracy": float(self.evaluate(arch))}
                row.update(self.cost(arch) if self.cost is not None else {})
                self.history.append(row)
            self.generation += 1
            done += 1
            self.population = self._next_population() if self.generation < cfg.generations else []
            self.save()
            best = max(r["accuracy"] for r in self.history)
            bar.update(1)
            bar.set_postfix(best=f"{best:.2f}", evaluated=len(self.history))
        bar.close()
        return self.result()

    def result(self):
        return SearchResult(list(self.history), self.budget, self.config, self.rejected)

    def state(self):
        return {"config": asdict(self.config), "budget": self.budget, "generation": self.generation,
                "population": [a.encode() for a in self.population], "history": self.history,
                "rejected": self.rejected, "rng": _rng_to_json(self.rng.getstate())}

    def save(self):
        if self.on_save is not None:
            self.on_save()  # e.g. write the latency table first: the state must never refer to unsaved measurements
        if not self.state_path:
            return
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def load(self):
        if not self.state_path or not os.path.exists(self.state_path):
            return False
        with open(self.state_path) as f:
            state = json.load(f)
        mine, theirs = asdict(self.config), dict(state["config"])
        mine.pop("generations"), theirs.pop("generations", None)  # a resumed run may go on for longer
        if mine != theirs or state["budget"] != self.budget:
            raise ValueError(f"search state {self.state_path!r} was made with other settings; "
                             f"use a new --out directory or the same settings")
        self.generation, self.history = int(state["generation"]), list(state["history"])
        self.population = [parse_spec(s) for s in state["population"]]
        self.seen = {r["spec"] for r in self.history}
        self.rejected = int(state["rejected"])
        self.rng.setstate(_rng_from_json(state["rng"]))
        if self.generation < self.config.generations and not self.population and self.generation > 0:
            self.population = self._next_population()  # the run that wrote this state was told to stop here
        return True
