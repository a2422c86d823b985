"""The torch helper's devices: a member trains on its worker's GPU, else the CPU, and every
checkpoint is device-independent (all tensors saved on the CPU).

The CPU path runs here for real, through Ray too; the GPU tests run only where torch sees a
GPU (skipped on this project's CI machine, which has none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from firepbt import PBT, run  # noqa: E402
from firepbt.integrations.torch import (  # noqa: E402
    STATE_FILE,
    TorchTrainable,
    load_state,
    member_device,
)
from firepbt.invariants import check_store  # noqa: E402
from firepbt.space import LogUniform, Space  # noqa: E402

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible to torch here")


class Fit(TorchTrainable):
    """A tiny regression with batch norm, written the device-aware way: batches go to
    ``self.device``."""

    SPACE = Space(lr=LogUniform(1e-3, 1e-1))
    built_on: torch.device | None = None

    def build(self, hparams: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        self.built_on = self.device  # set before build, so build may use it
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
        self.generator = torch.Generator().manual_seed(seed + 1)
        return model, torch.optim.SGD(model.parameters(), lr=hparams["lr"], momentum=0.9)

    def train_step(self) -> None:
        x = torch.randn(16, 4, generator=self.generator).to(self.device)
        y = x.sum(1, keepdim=True)
        self.optimizer.zero_grad()
        nn.functional.mse_loss(self.model(x), y).backward()
        self.optimizer.step()

    def evaluate(self) -> float:
        self.model.eval()
        with torch.no_grad():
            x = torch.ones(2, 4, device=self.device)
            return -float((self.model(x) - 4.0).abs().mean())


class FitOnCPU(Fit):
    DEVICE = "cpu"


def tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in tensors(v)]
    return []


def saved_tensors(path: Path) -> list[torch.Tensor]:
    # No map_location: what the file itself says about devices.
    state = torch.load(path / STATE_FILE, weights_only=True)
    return tensors(state)


def test_member_device() -> None:
    assert member_device("cpu") == torch.device("cpu")
    assert member_device("cuda:1") == torch.device("cuda:1")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert member_device().type == member_device("auto").type == expected


def test_model_goes_to_the_member_device_and_checkpoints_hold_cpu_tensors(
    tmp_path: Path,
) -> None:
    t = Fit()
    t.setup({"lr": 0.05}, seed=1)
    assert t.device == t.built_on == member_device()
    assert all(p.device.type == t.device.type for p in t.model.parameters())
    t.train(5)
    t.save(tmp_path / "ck")
    found = saved_tensors(tmp_path / "ck")
    assert found and all(x.device.type == "cpu" for x in found)
    # Batch norm's per-module version survives the copy to the CPU.
    state = torch.load(tmp_path / "ck" / STATE_FILE, weights_only=True)
    assert "1" in state["model"]._metadata
    other = FitOnCPU()
    other.setup({"lr": 0.05}, seed=9)
    other.load(tmp_path / "ck")
    assert other.step == 5 and other.device == torch.device("cpu")
    for a, b in zip(other.model.state_dict().values(), t.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b.cpu())


@gpu
def test_gpu_member_checkpoint_loads_on_cpu_and_continues(tmp_path: Path) -> None:
    on_gpu = Fit()
    on_gpu.setup({"lr": 0.05}, seed=2)
    assert on_gpu.device.type == "cuda"
    assert all(p.is_cuda for p in on_gpu.model.parameters())
    on_gpu.train(5)
    on_gpu.save(tmp_path / "ck")
    assert all(x.device.type == "cpu" for x in saved_tensors(tmp_path / "ck"))
    state = torch.load(tmp_path / "ck" / STATE_FILE, weights_only=True)
    assert state["cuda_rng"] is not None
    on_cpu = FitOnCPU()
    on_cpu.setup({"lr": 0.05}, seed=3)
    on_cpu.load(tmp_path / "ck")
    on_cpu.train(2)  # the momentum buffers came along, on the CPU
    assert all(not v["momentum_buffer"].is_cuda for v in on_cpu.optimizer.state.values())
    back = Fit()
    back.setup({"lr": 0.05}, seed=4)
    load_state(tmp_path / "ck", back.model, back.optimizer)
    back.train(1)  # optimiser state moved onto the GPU with its parameters
    assert all(v["momentum_buffer"].is_cuda for v in back.optimizer.state.values())


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_torch_members_run_on_ray_and_use_the_cpu_without_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (the ray extra)")
    for key, value in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_AUTH_MODE", "disabled"),
                       ("RAY_USAGE_STATS_ENABLED", "0")):
        monkeypatch.setenv(key, value)
    # gpu=0 asks for no GPU share: the same code then trains on the CPU (and on a machine with
    # GPUs, gpu=0.5 would put each member on half of one).
    result = run(f"{os.path.abspath(__file__)}:Fit", algorithm=PBT(population=2), steps=20,
                 interval=10, store=str(tmp_path / "run.db"), executor="ray", workers=2,
                 resources_per_member={"cpu": 0.5, "gpu": 0})
    assert result.status() == "finished" and check_store(result.store) == []
    live = result.store.checkpoints()
    assert live and all(x.device.type == "cpu"
                        for c in live for x in saved_tensors(Path(c.path)))
