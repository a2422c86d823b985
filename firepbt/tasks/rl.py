"""Reinforcement learning: A2C on gymnasium's Acrobot-v1 (and LunarLander-v3 with Box2D).

Acrobot swings a two-link pendulum's tip above a line; every step costs -1 and an episode is
truncated after 500 steps, so returns lie in [-500, 0] and a solved policy scores about -80 to
-100. It is harder than CartPole because a random policy rarely reaches the goal in 500
steps, so the first reward signal depends on exploration (the entropy cost matters).

One firepbt step is one synchronous rollout of :data:`ROLLOUT_STEPS` steps in each of
:data:`NUM_ENVS` environments (a ``gymnasium.vector.SyncVectorEnv``) followed by one
actor-critic update with GAE advantages. Tuned: ``lr`` (Adam) and ``entropy_cost``; ``gamma``
and ``gae_lambda`` are constants of ``SPACE``. The constant ``optimizer=schedulefree-adam``
(with ``warmup_steps``) trains with Schedule-Free AdamW instead, the baseline without a
schedule; its rollouts use the training weights, as A2C's returns come from training.

Checkpoints hold the model, the optimiser, torch's RNG and the action-sampling generator, the
recent-returns buffer and the step counter. Environments cannot be checkpointed, so ``load``
resets them with a seed derived from ``(member seed, step)`` and drops the partial episodes
that were running. That is the only way a restored member differs from one that kept running;
two loads of one checkpoint continue identically, and a fresh ``setup`` is exactly a load at
step 0.

Measured timings and returns are in the class docstrings.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import nn

from firepbt.errors import ConfigError
from firepbt.integrations.torch import TorchTrainable, single_thread
from firepbt.space import LogUniform, Space
from firepbt.tasks.optimizers import make_optimizer

NUM_ENVS = 8
ROLLOUT_STEPS = 16
HIDDEN = 64
VALUE_COST = 0.5
MAX_GRAD_NORM = 0.5
ADAM_EPS = 1e-5
RECENT_EPISODES = 20
WORST_RETURN = -500.0
"""Acrobot's lowest possible return (500 steps at -1), reported before any episode ends."""

_A2C_SPACE = Space(
    lr=LogUniform(1e-4, 1e-2),
    entropy_cost=LogUniform(1e-4, 1e-1),
    gamma=0.99,
    gae_lambda=0.95,
    optimizer="adam",  # or "schedulefree-adam", the baseline without a schedule
    warmup_steps=0,  # Schedule-Free's linear warm-up
)


def derived_seed(seed: int, *stream: int) -> int:
    """An independent 31-bit seed per (member seed, purpose...), e.g. init vs. env resets.

    31 bits because gymnasium seeds each sub-environment with ``seed + i``.
    """
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint32)[0] >> 1)


class ActorCritic(nn.Module):
    """Separate 2x64 tanh MLPs for the policy logits and the state value."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.policy = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, n_actions),
        )
        self.value = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 1),
        )
        # A small last policy layer starts near the uniform policy, the best explorer here.
        last = self.policy[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.zero_()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits (n, actions), values (n,))``."""
        return self.policy(obs), self.value(obs).squeeze(-1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates for a ``(T, n_envs)`` rollout.

    Args:
        rewards: Rewards ``r_t``; for truncated steps already including ``gamma * V(s_final)``.
        values: ``V(s_t)``.
        dones: 1.0 where the episode ended at step ``t`` (no bootstrapping past it).
        last_values: ``V(s_T)`` for the observation after the rollout.
        gamma: Discount.
        lam: GAE lambda (1 gives Monte-Carlo-like n-step returns, 0 one-step TD).

    Returns:
        Advantages of shape ``(T, n_envs)``; returns are ``advantages + values``.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_values)
    next_values = last_values
    for t in range(rewards.shape[0] - 1, -1, -1):
        keep = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * keep - values[t]
        running = delta + gamma * lam * keep * running
        advantages[t] = running
        next_values = values[t]
    return advantages


def _check_hparams(hparams: Mapping[str, Any]) -> None:
    """Raise ConfigError for a hyperparameter A2C cannot use."""
    rules = {
        "lr": (lambda v: v > 0, "must be > 0"),
        "entropy_cost": (lambda v: v >= 0, "must be >= 0"),
        "gamma": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "gae_lambda": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    }
    for key, (ok, rule) in rules.items():
        if key not in hparams:
            raise ConfigError(f"hparam {key!r} is missing; A2C needs {sorted(rules)}")
        value = hparams[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value
        ) or not ok(value):
            raise ConfigError(f"hparam {key!r} = {value!r} {rule} (a finite number)")


class VectorA2C(TorchTrainable):
    """A2C (GAE, Adam) with 8 synchronous copies of the gymnasium env ``ENV_ID``.

    Subclasses set ``ENV_ID`` (a discrete-action env), ``NO_EPISODE_RETURN`` (the metric
    before any episode has finished), ``SPACE`` and ``DEFAULTS``.
    """

    # These small models build their batches on the CPU (one torch thread per member).
    DEVICE: ClassVar[str] = "cpu"

    ENV_ID: ClassVar[str]
    NO_EPISODE_RETURN: ClassVar[float]


    envs: SyncVectorEnv
    recent: deque[float]

    def build(
        self, hparams: Mapping[str, Any], seed: int
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        _check_hparams(hparams)
        single_thread()
        self.envs = SyncVectorEnv(
            [lambda: gym.make(self.ENV_ID) for _ in range(NUM_ENVS)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
        obs_space = self.envs.single_observation_space
        act_space = self.envs.single_action_space
        assert obs_space.shape is not None and isinstance(act_space, gym.spaces.Discrete)
        # Initialise from the member's seed without disturbing torch's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, 0))
            model = ActorCritic(int(obs_space.shape[0]), int(act_space.n))
        self.generator = torch.Generator().manual_seed(derived_seed(seed, 1))
        optimizer = make_optimizer(model, hparams, default="adam", eps=ADAM_EPS)
        self.recent = deque(maxlen=RECENT_EPISODES)
        self.episodes = 0
        self._reset_envs(seed, step=0)
        return model, optimizer

    def _reset_envs(self, seed: int, step: int) -> None:
        """Start fresh episodes in every env, seeded from ``(member seed, step)``."""
        obs, _ = self.envs.reset(seed=derived_seed(seed, 2, step))
        self._obs = torch.as_tensor(obs, dtype=torch.float32)
        self._running = np.zeros(NUM_ENVS)  # undiscounted return of each running episode

    def train_step(self) -> None:
        gamma = float(self.hparams["gamma"])
        obs_buf, act_buf, rew_buf, done_buf = [], [], [], []
        for _ in range(ROLLOUT_STEPS):
            with torch.no_grad():
                logits, _ = self.model(self._obs)
            actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator)
            actions = actions.squeeze(1)
            obs, reward, terminated, truncated, info = self.envs.step(actions.numpy())
            reward_t = torch.as_tensor(reward, dtype=torch.float32)
            if truncated.any():
                # A time limit is not a real end: bootstrap from the state it stopped in.
                final = torch.as_tensor(
                    np.stack([o if t else np.zeros_like(obs[0]) for o, t in
                              zip(info["final_obs"], truncated & ~terminated, strict=True)]),
                    dtype=torch.float32,
                )
                with torch.no_grad():
                    _, final_values = self.model(final)
                cut = torch.as_tensor(truncated & ~terminated)
                reward_t = reward_t + gamma * final_values * cut
            self._record(reward, terminated | truncated)
            obs_buf.append(self._obs)
            act_buf.append(actions)
            rew_buf.append(reward_t)
            done_buf.append(torch.as_tensor(terminated | truncated, dtype=torch.float32))
            self._obs = torch.as_tensor(obs, dtype=torch.float32)
        self._update(obs_buf, act_buf, rew_buf, done_buf)

    def _record(self, reward: np.ndarray, done: np.ndarray) -> None:
        """Accumulate episode returns and push finished ones into the recent buffer."""
        self._running += reward
        for i in np.flatnonzero(done):
            self.recent.append(float(self._running[i]))
            self.episodes += 1
            self._running[i] = 0.0

    def _update(
        self,
        obs_buf: list[torch.Tensor],
        act_buf: list[torch.Tensor],
        rew_buf: list[torch.Tensor],
        done_buf: list[torch.Tensor],
    ) -> None:
        obs = torch.stack(obs_buf)  # (T, n, obs_dim)
        logits, values = self.model(obs.flatten(0, 1))
        values = values.view(ROLLOUT_STEPS, NUM_ENVS)
        with torch.no_grad():
            _, last_values = self.model(self._obs)
            advantages = gae(
                torch.stack(rew_buf), values.detach(), torch.stack(done_buf), last_values,
                float(self.hparams["gamma"]), float(self.hparams["gae_lambda"]),
            )
            returns = advantages + values.detach()
        log_probs = torch.log_softmax(logits, -1)
        taken = log_probs.gather(1, torch.stack(act_buf).flatten().unsqueeze(1)).squeeze(1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        policy_loss = -(taken * advantages.flatten()).mean()
        value_loss = 0.5 * ((returns - values) ** 2).mean()
        loss = (
            policy_loss + VALUE_COST * value_loss - float(self.hparams["entropy_cost"]) * entropy
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clipping keeps one lucky, huge-advantage rollout from wrecking the policy.
        nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()

    def evaluate(self) -> float:
        """Mean return of the last 20 finished episodes; ``NO_EPISODE_RETURN`` before that."""
        if not self.recent:
            return self.NO_EPISODE_RETURN
        return float(np.mean(self.recent))

    def set_hparams(self, hparams: Mapping[str, Any]) -> None:
        _check_hparams(hparams)
        super().set_hparams(hparams)

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "recent": list(self.recent), "episodes": self.episodes}

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        super().load_extra_state(extra)
        self.recent = deque((float(r) for r in extra["recent"]), maxlen=RECENT_EPISODES)
        self.episodes = int(extra["episodes"])

    def load(self, path: Path) -> None:
        super().load(path)
        # Envs cannot be checkpointed: start fresh episodes, seeded so reloading is repeatable.
        self._reset_envs(self.seed, self.step)


class AcrobotA2C(VectorA2C):
    """A2C (GAE, Adam) on Acrobot-v1 with 8 synchronous environments.

    Metric: ``evaluate()`` is the mean undiscounted return of the last 20 finished episodes
    (over all environments), in [-500, 0], higher is better. Before any episode has finished it
    returns -500, Acrobot's worst return, so an untrained member ranks last rather than invalid.

    One step = 16 environment steps in each of 8 environments (128 transitions) + one update.
    Hyperparameters: ``lr`` LogUniform(1e-4, 1e-2) (applied to Adam in place),
    ``entropy_cost`` LogUniform(1e-4, 0.1); constants ``gamma`` 0.99 and ``gae_lambda`` 0.95.

    Measured (1 torch thread, a 2-core machine shared with ~10 other busy processes, so
    timings are pessimistic): 27-80 ms per step, typically ~45. Mean of last 20 returns every
    100 steps, seed 0 unless said: lr 3e-3, entropy 1e-2: -500 until step 300, -98 at 500,
    about -80 from 800 on; seed 1: -185 at 200, -90 at 600, -80 to -90 to step 2,000. lr 1e-3:
    -133 at 200, -90 to -170 after. Entropy 1e-1: -86 at 600; 1e-4: -87 at 500. lr 1e-4 and
    lr 1e-2 stay at about -500 for 1,000 steps, so the learning rate matters. The ``DEFAULTS``
    of 2,000 steps take 1-1.5 minutes per member.
    """

    ENV_ID: ClassVar[str] = "Acrobot-v1"
    NO_EPISODE_RETURN: ClassVar[float] = WORST_RETURN
    SPACE: ClassVar[Space] = _A2C_SPACE
    DEFAULTS: ClassVar[dict[str, int]] = {"steps": 2000, "interval": 100, "eval_every": 10}


class LunarLanderA2C(VectorA2C):
    """A2C on LunarLander-v3 (discrete actions); needs ``pip install "gymnasium[box2d]"``.

    Same algorithm, network, hyperparameters and metric as :class:`AcrobotA2C`. LunarLander has
    no lowest return (a crash costs -100 on top of the shaping), so before any episode has
    finished ``evaluate()`` returns -500, below what a random policy scores (about -200).
    Solved is a mean of 200.

    Measured like :class:`AcrobotA2C` (shared 2-core machine): about 66 ms per step; lr 1e-3,
    entropy 1e-2, seed 0, mean of the last 20 returns every 100 steps: -232 at 100, about 0
    at 1,100, 150-178 at 2,000-2,600 (not yet stable: 30-80 at 2,800-3,000). The ``DEFAULTS``
    of 3,000 steps take about 3 minutes per member, so this is the slower of the two tasks.
    """

    ENV_ID: ClassVar[str] = "LunarLander-v3"
    NO_EPISODE_RETURN: ClassVar[float] = -500.0
    SPACE: ClassVar[Space] = _A2C_SPACE
    DEFAULTS: ClassVar[dict[str, int]] = {"steps": 3000, "interval": 100, "eval_every": 10}
