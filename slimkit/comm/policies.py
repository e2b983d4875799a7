"""Online tabular Q-learning for MQGrad's bit-width choice.

State = (signs of the last ``history`` relative loss changes, each -1/0/+1 with a dead zone, and the
index of the current bit-width); action = index into the allowed bit-widths. epsilon-greedy with
its own seeded generator, so ranks that see the same losses make the same choices.
"""
import torch


class QLearningPolicy:
    def __init__(self, n_actions: int, history: int = 3, epsilon: float = 0.1, lr: float = 0.5,
                 gamma: float = 0.9, dead_zone: float = 0.01, seed: int = 0):
        if n_actions < 1 or history < 1:
            raise ValueError(f"need n_actions >= 1 and history >= 1, got {n_actions}, {history}")
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.n_actions, self.history, self.epsilon = n_actions, history, epsilon
        self.lr, self.gamma, self.dead_zone = lr, gamma, dead_zone
        self.q: dict[tuple, list[float]] = {}
        self.generator = torch.Generator().manual_seed(seed)

    def encode(self, rel_deltas, action):
        """Discretise the recent relative loss changes (+1 = loss went down)."""
        recent = list(rel_deltas)[-self.history :]
        recent = [0.0] * (self.history - len(recent)) + recent
        signs = tuple(0 if abs(d) < self.dead_zone else (1 if d > 0 else -1) for d in recent)
        return signs + (int(action),)

    def values(self, state):
        return self.q.setdefault(state, [0.0] * self.n_actions)

    def act(self, state) -> int:
        if float(torch.rand((), generator=self.generator)) < self.epsilon:
            return int(torch.randint(self.n_actions, (), generator=self.generator))
        vals = self.values(state)
        return max(range(self.n_actions), key=lambda a: (vals[a], -a))  # ties -> fewer bits

    def update(self, state, action, reward, next_state):
        target = reward + self.gamma * max(self.values(next_state))
        vals = self.values(state)
        vals[action] += self.lr * (target - vals[action])

    def state_dict(self):
        return {"q": [(list(k), list(v)) for k, v in self.q.items()], "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.q = {tuple(k): list(v) for k, v in state["q"]}
        self.generator.set_state(state["generator"])
