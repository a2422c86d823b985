"""Tests for firepbt.tasks.fmnist on the real Fashion-MNIST files (and a tiny fake set)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from firepbt.errors import ConfigError  # noqa: E402
from firepbt.tasks import fmnist  # noqa: E402
from firepbt.tasks.fmnist import (  # noqa: E402
    DEFAULT_DIR,
    ENV_VAR,
    FILES,
    FashionMNISTCNN,
    FashionMNISTMLP,
    load_fashion_mnist,
    read_idx,
)
from firepbt.tasks.optimizers import make_optimizer  # noqa: E402

torch.set_num_threads(1)

needs_data = pytest.mark.skipif(
    not (DEFAULT_DIR / FILES["train_images"]).is_file(),
    reason="apt-get install -y dataset-fashion-mnist",
)

HP = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5, "eval_size": 1000}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@needs_data
def test_read_idx_real_files() -> None:
    images = read_idx(DEFAULT_DIR / FILES["train_images"])
    labels = read_idx(DEFAULT_DIR / FILES["test_labels"])
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,)
    assert set(np.unique(labels)) == set(range(10))


@needs_data
def test_splits_shapes_dtypes_and_labels() -> None:
    data = load_fashion_mnist()
    assert data.train_images.shape == (55_000, 784)
    assert data.val_images.shape == (5_000, 784)
    assert data.test_images.shape == (10_000, 784)
    assert data.train_images.dtype == np.uint8
    for labels, n in (
        (data.train_labels, 55_000),
        (data.val_labels, 5_000),
        (data.test_labels, 10_000),
    ):
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert labels.min() == 0 and labels.max() == 9
    # Validation is the last 5k of the 60k training file, in file order.
    raw_labels = read_idx(DEFAULT_DIR / FILES["train_labels"])
    np.testing.assert_array_equal(data.val_labels, raw_labels[55_000:])
    x = data.normalise(data.train_images[:5000])
    assert x.dtype == np.float32
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    assert load_fashion_mnist() is data  # cached per process


def test_env_var_overrides_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5_010, 28, 28))
    write_idx(tmp_path / FILES["train_images"], train)
    write_idx(tmp_path / FILES["train_labels"], np.arange(5_010) % 10)
    write_idx(tmp_path / FILES["test_images"], rng.integers(0, 256, (3, 28, 28)))
    write_idx(tmp_path / FILES["test_labels"], np.array([1, 2, 3]))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    data = load_fashion_mnist()
    assert data.train_images.shape == (10, 784)
    np.testing.assert_array_equal(data.val_images, train[10:].reshape(5_000, 784))
    np.testing.assert_array_equal(data.test_labels, [1, 2, 3])
    pixels = train[:10:10].ravel() / 255.0  # statistics use every 10th training image
    assert data.mean == pytest.approx(pixels.mean())
    assert data.std == pytest.approx(pixels.std())


def test_missing_folder_names_it_and_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere.*apt-get install -y dataset-fashion"):
        load_fashion_mnist()


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x08\x01\x00\x00\x00\x02\x00"))
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02"))
    with pytest.raises(ValueError, match="shape"):
        read_idx(short)


@needs_data
def test_round_trip_across_an_epoch_boundary(tmp_path: Path) -> None:
    def member() -> FashionMNISTMLP:
        m = FashionMNISTMLP()
        m.setup(HP, seed=4)
        m._cursor = len(m._order) - 2 * m.BATCH_SIZE - 5  # two steps left in this epoch
        return m

    straight = member()
    straight.train(6)
    first = member()
    first.train(3)  # crosses into a fresh permutation
    first.save(tmp_path)
    resumed = FashionMNISTMLP()
    resumed.setup(HP, seed=123)
    resumed.load(tmp_path)
    resumed.train(3)
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(resumed._order, straight._order)
    assert resumed.evaluate() == straight.evaluate()


@needs_data
def test_seeds_differ_and_repeat() -> None:
    a, b, c = FashionMNISTMLP(), FashionMNISTMLP(), FashionMNISTMLP()
    a.setup(HP, seed=1)
    b.setup(HP, seed=1)
    c.setup(HP, seed=2)
    assert torch.equal(a._order, b._order) and not torch.equal(a._order, c._order)
    first = next(a.model.parameters())
    assert torch.equal(first, next(b.model.parameters()))
    assert not torch.equal(first, next(c.model.parameters()))


@needs_data
def test_short_mlp_run_beats_chance() -> None:
    m = FashionMNISTMLP()
    m.setup(HP, seed=0)
    before = m.evaluate()
    m.train(150)
    after = m.evaluate()
    assert before < 0.3 < 0.65 < after <= 1.0
    assert len(m._val_y) == 1000
    assert 0.65 < m.test_accuracy() <= 1.0


@needs_data
def test_short_cnn_run_beats_chance() -> None:
    m = FashionMNISTCNN()
    m.setup({**HP, "eval_size": 500}, seed=0)
    m.train(40)
    assert m.evaluate() > 0.5


@needs_data
def test_set_hparams_reaches_the_optimizer() -> None:
    m = FashionMNISTMLP()
    m.setup(HP, seed=0)
    m.set_hparams({**HP, "lr": 0.001, "momentum": 0.6})
    group = m.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.001, 0.6, 1e-5)


@needs_data
@pytest.mark.parametrize("size", [0, 5_001])
def test_eval_size_is_validated(size: int) -> None:
    with pytest.raises(ConfigError, match=f"eval_size={size}"):
        FashionMNISTMLP().setup({**HP, "eval_size": size}, seed=0)


def test_space_and_defaults() -> None:
    for cls in (FashionMNISTMLP, FashionMNISTCNN):
        assert set(cls.DEFAULTS) == {"steps", "interval", "eval_every"}
        sample = cls.SPACE.sample(np.random.default_rng(0))
        assert 1e-3 <= sample["lr"] <= 0.1
        assert 0.5 <= sample["momentum"] <= 0.99
        assert 1e-6 <= sample["weight_decay"] <= 1e-3
        assert sample["eval_size"] == 1000
    assert fmnist.VALIDATION_SIZE == 5_000


@needs_data
def test_schedule_free_trains_evaluates_at_averaged_weights_and_round_trips(
        tmp_path: Path) -> None:
    pytest.importorskip("schedulefree")
    hp = {**HP, "optimizer": "schedulefree", "lr": 1.0, "warmup_steps": 20}
    m = FashionMNISTMLP()
    m.setup(hp, seed=0)
    m.train(150)
    y = [p.detach().clone() for p in m.model.parameters()]
    assert 0.65 < m.evaluate() <= 1.0
    # Evaluation swaps the averaged weights in and back out (up to float rounding).
    after = list(m.model.parameters())
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(y, after, strict=True))
    m.save(tmp_path)
    resumed = FashionMNISTMLP()
    resumed.setup(hp, seed=9)
    resumed.load(tmp_path)
    m.train(5)
    resumed.train(5)
    for a, b in zip(resumed.model.parameters(), m.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.evaluate() == m.evaluate()


def test_an_unknown_optimizer_is_named() -> None:
    with pytest.raises(ConfigError, match="optimizer='lion': must be one of sgd, adam, "
                                          "schedulefree, schedulefree-adam"):
        make_optimizer(torch.nn.Linear(2, 2), {"lr": 0.1, "optimizer": "lion"})
