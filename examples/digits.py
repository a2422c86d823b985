"""A complete firepbt task: a small MLP on scikit-learn's bundled digits (nothing downloads).

    firepbt run examples/digits.py:Digits --algorithm fire --population 10 --name digits
"""

from pathlib import Path

import torch
from sklearn.datasets import load_digits

import firepbt as fp

# What to tune (constants ride along unchanged), the run's default length, and the metric.
SPACE = fp.Space(lr=fp.LogUniform(1e-3, 0.5), weight_decay=fp.LogUniform(1e-6, 1e-2),
                 momentum=0.9)
DEFAULTS = {"steps": 600, "interval": 50}  # steps per member; steps between ready points
METRIC = fp.Metric("accuracy", mode="max")


def _data():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])  # train, validation


class Digits(fp.Trainable):
    def setup(self, hparams, seed):
        torch.manual_seed(seed)
        self.hparams = dict(hparams)
        self.train_set, self.val_set = _data()
        self.batches = torch.Generator().manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=hparams["lr"])
        self.set_hparams(hparams)

    def set_hparams(self, hparams):  # called after every load and explore
        self.hparams = dict(hparams)
        for group in self.opt.param_groups:
            group.update(lr=hparams["lr"], momentum=hparams["momentum"],
                         weight_decay=hparams["weight_decay"])

    def train(self, steps):
        x, y = self.train_set
        for _ in range(steps):
            batch = torch.randint(len(x), (64,), generator=self.batches)
            loss = torch.nn.functional.cross_entropy(self.model(x[batch]), y[batch])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    def evaluate(self):
        x, y = self.val_set
        with torch.no_grad():
            return (self.model(x).argmax(1) == y).float().mean().item()

    def save(self, path):
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict()}
        torch.save(state, Path(path) / "state.pt")

    def load(self, path):
        state = torch.load(Path(path) / "state.pt", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
