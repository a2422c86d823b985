"""PBT on an existing PyTorch Lightning CNN (real Fashion-MNIST), against a constant lr.

``LitCNN`` and ``FashionMNISTData`` are ordinary Lightning code; the lines marked ``# firepbt``
are all it takes to run them as PBT members. At the end the best member's checkpoint (a
Lightning checkpoint) and a plain Lightning run at the default constant lr are scored on the
10,000 test images, which neither saw.

    python examples/lightning_fmnist.py                 # 4 members x 800 steps, ~5 min here
    python examples/lightning_fmnist.py --tiny          # seconds (CI)

The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import firepbt as fp  # firepbt
from firepbt.integrations.lightning import CKPT_FILE, fit  # firepbt
from firepbt.tasks.fmnist import load_fashion_mnist

DEFAULT_LR = 0.01
SIZES = {  # steps, interval, eval_every, population, validation images, training images
    "tiny": dict(steps=40, interval=20, eval_every=10, population=2, val=500, train=4096),
    "full": dict(steps=800, interval=100, eval_every=10, population=4, val=2000, train=55000),
}


class LitCNN(pl.LightningModule):
    """Two conv layers + linear, SGD with momentum; lr from the saved hyperparameters."""

    def __init__(self, lr: float = DEFAULT_LR, momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr,
                               momentum=self.hparams.momentum)


def tensors(images: Any, labels: Any, mean: float, std: float) -> TensorDataset:
    x = (torch.from_numpy(images).float() / 255.0 - mean) / std
    return TensorDataset(x.view(-1, 1, 28, 28), torch.from_numpy(labels))


class FashionMNISTData(pl.LightningDataModule):
    def __init__(self, n_train: int, n_val: int) -> None:
        super().__init__()
        self.n_train, self.n_val = n_train, n_val

    def setup(self, stage: str) -> None:
        d = load_fashion_mnist()
        self.train = tensors(d.train_images[: self.n_train], d.train_labels[: self.n_train],
                             d.mean, d.std)
        self.val = tensors(d.val_images[: self.n_val], d.val_labels[: self.n_val], d.mean, d.std)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=128, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=1000)


def make_trainer(max_steps: int, eval_every: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        val_check_interval=eval_every, check_val_every_n_epoch=None,  # firepbt: eval cadence
    )


def train_fn(hparams: dict[str, Any], checkpoint: Path | None, report: Any,  # firepbt
             seed: int) -> None:
    quiet()
    torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    model = LitCNN(lr=hparams["lr"], momentum=hparams["momentum"])
    trainer = make_trainer(hparams["steps"], hparams["eval_every"])
    fit(trainer, model, hparams, checkpoint, report, monitor="val_acc",  # firepbt
        datamodule=FashionMNISTData(hparams["train"], hparams["val"]))


def test_accuracy(model: LitCNN) -> float:
    d = load_fashion_mnist()
    data = tensors(d.test_images, d.test_labels, d.mean, d.std)
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in DataLoader(data, 2000))
    return correct / len(data)


def quiet() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    # Members resume mid-epoch; the data loader then starts the epoch over (documented).
    warnings.filterwarnings("ignore", ".*ended before the epoch ended.*")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true", help="CI size: seconds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    size = SIZES["tiny" if args.tiny else "full"]
    quiet()
    torch.set_num_threads(1)
    # Constants ride along in the hyperparameters, so worker processes see the sizes too.
    consts = {k: size[k] for k in ("steps", "eval_every", "train", "val")}
    space = fp.Space(lr=fp.LogUniform(1e-3, 0.3), momentum=0.9, **consts)  # firepbt
    with tempfile.TemporaryDirectory(prefix="firepbt-lit-") as tmp:
        t0 = time.perf_counter()
        res = fp.run(train_fn, space, fp.PBT(population=size["population"]),  # firepbt
                     steps=size["steps"], interval=size["interval"],
                     eval_every=size["eval_every"], store=f"{tmp}/lit.db",
                     workers=args.workers, seed=args.seed)
        pbt_s = time.perf_counter() - t0
        assert res.best is not None
        ckpt = Path(res.store.checkpoint(res.store.worker(res.best).checkpoint).path)
        best = LitCNN.load_from_checkpoint(ckpt / CKPT_FILE, weights_only=True)
        pbt_test = test_accuracy(best)

    # The baseline: the same Lightning code at its default constant lr, no firepbt.
    pl.seed_everything(args.seed, verbose=False)
    base = LitCNN()
    make_trainer(size["steps"], size["eval_every"]).fit(
        base, datamodule=FashionMNISTData(size["train"], size["val"]))
    base_test = test_accuracy(base)
    schedule = [(p.start_step, p.end_step, round(float(p.hparams["lr"]), 5))
                for p in res.schedule(res.best)]
    print(f"PBT ({size['population']} members x {size['steps']} steps, {pbt_s:.0f} s): best "
          f"member {res.best}, val {res.best_metric:.4f}, test accuracy {pbt_test:.4f}")
    print(f"  lr schedule: {schedule}")
    print(f"constant lr {DEFAULT_LR} ({size['steps']} steps): test accuracy {base_test:.4f}")
    print(json.dumps({"pbt_test": pbt_test, "constant_test": base_test,
                      "pbt_val": res.best_metric, "status": res.status()}))


if __name__ == "__main__":
    main()
