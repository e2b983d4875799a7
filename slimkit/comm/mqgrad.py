"""MQGrad: the bit-width is an action chosen online by reinforcement learning (Cui et al., 2018).

Every ``interval`` steps the policy observes the mean loss of the last window, gets the reward
    r = (L_prev - L_now) / |L_prev|  -  lam * bits / 32      (loss decrease traded against bytes)
and picks the next bit-width from ``actions``. State, reward and learner are slimkit's [proposal]
(the paper does not publish them, see methods.md, "MQGrad"). The quantizer is QSGD, wrapped in
ECQ error compensation when ``ef`` is true. All ranks must feed the same loss (CommState.observe_loss
all-reduces it) and share ``seed``, so every rank takes the same decision without a broadcast.
"""
from slimkit.comm._registry import register_compressor
from slimkit.comm.base import Compressor
from slimkit.comm.ecq import ECQ
from slimkit.comm.policies import QLearningPolicy
from slimkit.comm.qsgd import QSGD


@register_compressor("mqgrad")
class MQGrad(Compressor):
    def __init__(self, actions: tuple = (2, 4, 8, 16), initial_bits: int | None = None, interval: int = 10,
                 history: int = 3, lam: float = 0.1, epsilon: float = 0.1, ef: bool = True,
                 alpha: float = 0.2, beta: float = 0.9, bucket_size: int = 512, seed: int = 0,
                 nonfinite: str = "raise"):
        super().__init__(seed, nonfinite)
        actions = tuple(int(a) for a in actions)
        if not actions or any(not 1 <= a <= 16 for a in actions):
            raise ValueError(f"actions must be bit-widths in 1..16, got {actions!r}")
        if initial_bits is None:
            initial_bits = actions[len(actions) // 2]  # start in the middle of the range
        if initial_bits not in actions:
            raise ValueError(f"initial_bits={initial_bits} is not one of actions={actions}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval!r}")
        self.actions, self.interval, self.lam, self.ef = actions, interval, lam, ef
        self.initial_bits, self.history = initial_bits, history
        opts = dict(bucket_size=bucket_size, seed=seed, nonfinite=nonfinite)
        self.quantizer = (ECQ(bits=initial_bits, alpha=alpha, beta=beta, **opts) if ef
                          else QSGD(bits=initial_bits, **opts))
        self.fixed_size = False
        # the policy's generator is NOT re-seeded per rank: decisions must agree everywhere
        self.policy = QLearningPolicy(len(actions), history=history, epsilon=epsilon, seed=seed)
        self.action = actions.index(initial_bits)
        self.window: list[float] = []
        self.prev_mean: float | None = None
        self.rel_deltas: list[float] = []
        self.prev_state: tuple | None = None
        self.decisions: list[int] = [initial_bits]

    @property
    def bits(self) -> int:
        return self.actions[self.action]

    def config(self):
        """``initial_bits`` as resolved (the middle of ``actions`` when not given)."""
        return {**super().config(), "actions": self.actions, "initial_bits": self.initial_bits}

    def bind(self, rank):
        self.quantizer.bind(rank)

    def reset_rank_state(self, rank):
        self.quantizer.reset_rank_state(rank)  # the policy is shared by all ranks and kept

    def compress(self, flat, segments=None):
        flat = self.check_finite(flat.reshape(-1).float())
        if isinstance(self.quantizer, ECQ):
            return self.quantizer.compress(flat, segments, bits=self.bits)
        return self.quantizer.compress(flat, bits=self.bits)

    def compress_chunks(self, flat, segments, bounds):
        flat = self.check_finite(flat.reshape(-1).float())
        return self.quantizer.compress_chunks(flat, segments, bounds, bits=self.bits)

    def decompress(self, payload, numel):
        return self.quantizer.decompress(payload, numel)

    def decompress_own(self, payload, numel):
        return self.quantizer.decompress_own(payload, numel)  # the payload header carries the bit-width

    def observe_loss(self, loss: float) -> None:
        """Feed one step's loss (identical on all ranks); decides the next bit-width every interval."""
        loss = float(loss)
        if loss != loss or loss in (float("inf"), float("-inf")):
            return  # a non-finite loss carries no signal for the policy
        self.window.append(loss)
        if len(self.window) < self.interval:
            return
        mean = sum(self.window) / len(self.window)
        self.window = []
        if self.prev_mean is not None:
            rel = (self.prev_mean - mean) / max(abs(self.prev_mean), 1e-12)
            self.rel_deltas = (self.rel_deltas + [rel])[-self.history :]
            reward = rel - self.lam * self.bits / 32
            state = self.policy.encode(self.rel_deltas, self.action)
            if self.prev_state is not None:
                self.policy.update(self.prev_state, self.action, reward, state)
            self.action = self.policy.act(state)
            self.prev_state = state
            self.decisions.append(self.bits)
        self.prev_mean = mean

    def state_dict(self):
        return {"quantizer": self.quantizer.state_dict(), "policy": self.policy.state_dict(),
                "action": self.action, "window": list(self.window), "prev_mean": self.prev_mean,
                "rel_deltas": list(self.rel_deltas), "prev_state": self.prev_state,
                "decisions": list(self.decisions)}

    def load_state_dict(self, state):
        self.quantizer.load_state_dict(state["quantizer"])
        self.policy.load_state_dict(state["policy"])
        self.action, self.window = state["action"], list(state["window"])
        self.prev_mean, self.rel_deltas = state["prev_mean"], list(state["rel_deltas"])
        self.prev_state = tuple(state["prev_state"]) if state["prev_state"] is not None else None
        self.decisions = list(state["decisions"])
