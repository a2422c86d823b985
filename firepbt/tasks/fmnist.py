"""Fashion-MNIST classification tasks (real data, read offline from the Debian package).

The data comes from ``apt-get install -y dataset-fashion-mnist`` (IDX gzip files under
``/usr/share/datasets/fashion-mnist/``); set ``FIREPBT_FMNIST_DIR`` to read another folder.
Nothing is downloaded. Splits are fixed: the first 55,000 training images train, the last
5,000 validate (the fitness), and the 10,000 test images are only touched by
:meth:`FashionMNISTTask.test_accuracy`. Pixels are normalised with the mean and standard
deviation of the training images (every 10th of the 55k).

Measured on this 2-core machine (1 torch thread, other jobs running): an MLP step (batch
128) takes 3-5 ms and evaluating 1,000 validation images 10-15 ms, so one MLP member with
its ``DEFAULTS`` (1,500 steps, eval of 1,000 images every 10 steps) takes about 15 s and
reaches ~87-88 % validation accuracy at lr 0.05; a CNN member with its ``DEFAULTS`` (1,000
steps, eval every 20) takes about 40 s and reaches ~88 %. A 10-member population of MLPs
on 2 processes is therefore about 1.5 minutes.
"""

from __future__ import annotations

import gzip
import os
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from firepbt.errors import ConfigError
from firepbt.integrations.torch import TorchTrainable, single_thread
from firepbt.space import LogUniform, Space, Uniform
from firepbt.tasks.optimizers import evaluation_weights, make_optimizer

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FIREPBT_FMNIST_DIR"
VALIDATION_SIZE = 5_000
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = 10

# IDX type codes -> numpy big-endian dtypes (the format stores multi-byte values big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class FashionMNIST:
    """The three fixed splits: raw uint8 images ``(n, 784)``, int64 labels in 0..9.

    Images stay uint8 (a quarter of the memory of float32, and no slow conversion of all 70k
    at load time); :meth:`normalise` turns a batch into float32 with ``mean``/``std``, the
    pixel statistics (in [0, 1] units) of the training split.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: float
    std: float

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """Map uint8 pixels to float32 ``(x / 255 - mean) / std``."""
        return ((images.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)


def data_dir() -> Path:
    """The folder holding the IDX files: ``$FIREPBT_FMNIST_DIR`` or the Debian location."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def read_idx(path: Path) -> np.ndarray:
    """Parse one gzip-compressed IDX file into a numpy array of its declared shape.

    Raises:
        ValueError: The file is not a well-formed IDX file.
    """
    # One-shot decompression is about twice as fast as streaming through gzip.open.
    raw = gzip.decompress(Path(path).read_bytes())
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{str(path)!r} holds {len(raw) - header} data bytes; shape {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(folder: Path | None = None) -> FashionMNIST:
    """Load, split and normalise Fashion-MNIST; cached per process and folder.

    Args:
        folder: Where the four IDX gzip files are; default :func:`data_dir`.

    Raises:
        FileNotFoundError: A file is missing; the message names the folder and the apt command.
    """
    return _load_cached(str(Path(folder) if folder is not None else data_dir()))


@lru_cache(maxsize=2)
def _load_cached(folder: str) -> FashionMNIST:
    base = Path(folder)
    missing = [name for name in FILES.values() if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found in {folder!r}; install them with "
            f"'apt-get install -y dataset-fashion-mnist' or set {ENV_VAR} to their folder"
        )
    arrays = {key: read_idx(base / name) for key, name in FILES.items()}
    images = arrays["train_images"].reshape(len(arrays["train_images"]), -1)
    labels = arrays["train_labels"].astype(np.int64)
    test_images = arrays["test_images"].reshape(len(arrays["test_images"]), -1)
    n_train = len(images) - VALIDATION_SIZE
    # Statistics from the training split only, so validation/test stay unseen. Every 10th
    # image (5,500) pins them to ~3 digits at a tenth of the cost of all 43M pixels, which
    # matters because every member process loads the data.
    counts = np.bincount(images[:n_train:10].ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256) / 255.0
    mean = float(counts @ levels / counts.sum())
    std = float(np.sqrt(counts @ (levels - mean) ** 2 / counts.sum()))

    return FashionMNIST(
        train_images=images[:n_train],
        train_labels=labels[:n_train],
        val_images=images[n_train:],
        val_labels=labels[n_train:],
        test_images=test_images,
        test_labels=arrays["test_labels"].astype(np.int64),
        mean=mean,
        std=std,
    )


def _derived_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed per (member seed, purpose), so init and data order differ."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(2, np.uint64)[0] >> 1)


class FashionMNISTTask(TorchTrainable):
    """Shared Fashion-MNIST training loop; subclasses choose the network.

    Metric: ``evaluate()`` returns the accuracy (fraction in [0, 1], higher is better) on the
    first ``eval_size`` images of the fixed 5,000-image validation split. ``eval_size`` is read
    from the hyperparameters (a constant in ``SPACE``) and defaults to :attr:`EVAL_SIZE`.

    One training step is one minibatch of 128 with SGD + momentum, or Schedule-Free SGD when
    the space's constant ``optimizer`` is ``"schedulefree"`` (:func:`make_optimizer`). The data
    order is a per-epoch permutation drawn from a seeded ``torch.Generator``; the generator
    state and the position in the epoch are checkpointed, so a restored member sees the same
    batches.
    """

    # These small models build their batches on the CPU (one torch thread per member).
    DEVICE: ClassVar[str] = "cpu"

    BATCH_SIZE: ClassVar[int] = 128
    EVAL_SIZE: ClassVar[int] = VALIDATION_SIZE
    SPACE: ClassVar[Space]
    DEFAULTS: ClassVar[dict[str, int]]

    data: FashionMNIST
    _order: torch.Tensor
    _cursor: int

    @abstractmethod
    def make_model(self) -> nn.Module:
        """Return the untrained network mapping ``(n, 784)`` images to 10 logits."""

    def build(
        self, hparams: Mapping[str, Any], seed: int
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        single_thread()
        self.data = load_fashion_mnist()
        self._train_x = torch.from_numpy(self.data.train_images)
        self._train_y = torch.from_numpy(self.data.train_labels)
        eval_size = int(hparams.get("eval_size", self.EVAL_SIZE))
        if not 1 <= eval_size <= VALIDATION_SIZE:
            raise ConfigError(f"eval_size={eval_size} must be in [1, {VALIDATION_SIZE}]")
        self._val_x = torch.from_numpy(self.data.normalise(self.data.val_images[:eval_size]))
        self._val_y = torch.from_numpy(self.data.val_labels[:eval_size])
        # Initialise from the member's seed without disturbing torch's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derived_seed(seed, 0))
            model = self.make_model()
        self.generator = torch.Generator().manual_seed(_derived_seed(seed, 1))
        self._order = torch.randperm(len(self._train_x), generator=self.generator)
        self._cursor = 0
        return model, make_optimizer(model, hparams)

    def train_step(self) -> None:
        if self._cursor + self.BATCH_SIZE > len(self._order):
            # Drop the ragged tail so every step is a full batch, then start a new epoch.
            self._order = torch.randperm(len(self._train_x), generator=self.generator)
            self._cursor = 0
        idx = self._order[self._cursor : self._cursor + self.BATCH_SIZE]
        self._cursor += self.BATCH_SIZE
        self.optimizer.zero_grad(set_to_none=True)
        # Normalising per batch keeps the shared dataset uint8 (see FashionMNIST).
        x = (self._train_x[idx].to(torch.float32) / 255.0 - self.data.mean) / self.data.std
        loss = nn.functional.cross_entropy(self.model(x), self._train_y[idx])
        loss.backward()
        self.optimizer.step()

    def _accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.eval()
        correct = 0
        with torch.no_grad(), evaluation_weights(self.optimizer):
            # Chunks keep peak memory small for the CNN's activations.
            for start in range(0, len(images), 1000):
                logits = self.model(images[start : start + 1000])
                correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
        self.model.train()
        return correct / len(images)

    def evaluate(self) -> float:
        """Validation accuracy in [0, 1] on the first ``eval_size`` validation images."""
        return self._accuracy(self._val_x, self._val_y)

    def test_accuracy(self) -> float:
        """Accuracy on the 10,000 test images; for final reporting only, never for selection."""
        images = self.data.normalise(self.data.test_images)
        return self._accuracy(torch.from_numpy(images), torch.from_numpy(self.data.test_labels))

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "order": self._order, "cursor": self._cursor}

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        super().load_extra_state(extra)
        self._order = extra["order"]
        self._cursor = int(extra["cursor"])


class FashionMNISTMLP(FashionMNISTTask):
    """MLP 784-256-256-10 (ReLU) on Fashion-MNIST, SGD momentum, batch 128.

    Metric: validation accuracy in [0, 1] (higher is better); see :class:`FashionMNISTTask`.
    Search space: lr LogUniform(1e-3, 0.1) (spec: lr up to ~0.1 trains, 0.3 diverges),
    momentum Uniform(0.5, 0.99), weight_decay LogUniform(1e-6, 1e-3), and the constant
    ``eval_size=1000`` that keeps the frequent evaluations cheap for the demo (pass a space
    with ``eval_size=5000`` for the whole validation split). 12 epochs are about 5,160 steps.
    """

    SPACE: ClassVar[Space] = Space(
        lr=LogUniform(1e-3, 0.1),
        momentum=Uniform(0.5, 0.99),
        weight_decay=LogUniform(1e-6, 1e-3),
        eval_size=1000,
    )
    DEFAULTS: ClassVar[dict[str, int]] = {"steps": 1500, "interval": 100, "eval_every": 10}

    def make_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )


class FashionMNISTCNN(FashionMNISTTask):
    """Small CNN on Fashion-MNIST: two 3x3 conv + max-pool layers (8, 16 channels) + linear.

    Metric: validation accuracy in [0, 1] (higher is better); see :class:`FashionMNISTTask`.
    Same search space as :class:`FashionMNISTMLP`; about 3x slower per step.
    """

    SPACE: ClassVar[Space] = FashionMNISTMLP.SPACE
    DEFAULTS: ClassVar[dict[str, int]] = {"steps": 1000, "interval": 100, "eval_every": 20}

    def make_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, 10),
        )
