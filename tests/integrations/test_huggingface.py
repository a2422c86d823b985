"""firepbt.integrations.huggingface: a Trainer as a member (tiny BERT from a config, offline)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

import firepbt as fp  # noqa: E402
from firepbt.integrations.effect import NotInEffectError, read_applied_file  # noqa: E402
from firepbt.integrations.huggingface import HF_DIR, hyperparameter_search, train  # noqa: E402
from firepbt.trainable import make_trainable_class  # noqa: E402

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
logging.getLogger("transformers").setLevel(logging.ERROR)


class Parity(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Label = whether token 5 occurs in a random sequence of 8 tokens (a learnable rule)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(1, 20, (n, 8), generator=g)
        self.y = (self.x == 5).any(1).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "attention_mask": torch.ones(8, dtype=torch.long),
                "labels": self.y[i]}


def accuracy(pred: Any) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


OUT: list[Path] = []
TRAINERS: list[Trainer] = []
BREAK: list[bool] = [False]


def make_trainer(hparams: Mapping[str, Any], seed: int) -> Trainer:
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=8, num_labels=2)
    torch.manual_seed(seed)
    args = TrainingArguments(
        output_dir=str(OUT[0] / f"out{seed}"), learning_rate=hparams["lr"], seed=seed,
        max_steps=100, warmup_steps=10, lr_scheduler_type="linear", eval_strategy="steps",
        eval_steps=5, save_strategy="no", report_to="none", per_device_train_batch_size=16,
        per_device_eval_batch_size=64, use_cpu=True, disable_tqdm=True, logging_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=BertForSequenceClassification(config), args=args,
                      train_dataset=Parity(512, 0), eval_dataset=Parity(64, 1),
                      compute_metrics=accuracy)
    TRAINERS.append(trainer)
    return trainer


def train_fn(hparams: MutableMapping[str, Any], checkpoint: Path | None, report: Any,
             seed: int) -> None:
    trainer = make_trainer(hparams, seed)
    if BREAK[0] and checkpoint is not None:
        # A user bug: a callback that reloads the donor's scheduler after firepbt applied lr.
        class Reload(transformers.TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                pass

            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                kw["lr_scheduler"].load_state_dict(
                    torch.load(Path(checkpoint) / HF_DIR / "scheduler.pt", weights_only=True))

        trainer.add_callback(Reload())
    train(trainer, hparams, checkpoint, report, monitor="eval_accuracy")


def test_restore_keeps_the_members_lr_and_the_linear_schedule(tmp_path: Path) -> None:
    OUT[:] = [tmp_path]
    member = make_trainable_class(train_fn)
    donor = member()
    donor.setup({"lr": 1e-3}, 0)
    donor.train(10)
    assert 0.0 <= donor.evaluate() <= 1.0
    donor.save(tmp_path / "ck")
    assert (tmp_path / "ck" / HF_DIR / "optimizer.pt").is_file()
    m = member()
    m.setup({"lr": 3e-4}, 1)
    m.load(tmp_path / "ck")
    m.set_hparams({"lr": 3e-4})
    m.train(5)
    t = TRAINERS[-1]
    assert t.state.global_step == 15
    sched = t.lr_scheduler
    assert sched.base_lrs[0] == 3e-4
    # linear decay after 10 warm-up steps, at step 15 of 100: base * 85 / 90
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * 85 / 90)
    m.save(tmp_path / "ck2")
    history = read_applied_file(tmp_path / "ck2")
    assert [(e["step"], e["applied"]["lr"][0]) for e in history] == [(0, 1e-3), (10, 3e-4)]
    donor._stop_thread()
    m._stop_thread()


def test_a_scheduler_reloaded_after_apply_is_an_error(tmp_path: Path) -> None:
    OUT[:] = [tmp_path]
    member = make_trainable_class(train_fn)
    donor = member()
    donor.setup({"lr": 1e-3}, 0)
    donor.train(5)
    donor.save(tmp_path / "ck")
    donor._stop_thread()
    BREAK[0] = True
    try:
        m = member()
        m.setup({"lr": 3e-4}, 1)
        m.load(tmp_path / "ck")
        m.set_hparams({"lr": 3e-4})
        with pytest.raises(NotInEffectError, match=r"'lr'.*wanted 0\.0003.*0\.001"):
            m.train(2)
    finally:
        BREAK[0] = False


def test_hyperparameter_search_runs_a_population(tmp_path: Path) -> None:
    OUT[:] = [tmp_path]
    res = hyperparameter_search(
        make_trainer, fp.Space(lr=fp.LogUniform(1e-4, 3e-3)), fp.PBT(population=2),
        monitor="eval_accuracy", steps=20, interval=10, eval_every=5,
        store=str(tmp_path / "hf.db"),
    )
    assert res.status() == "finished"
    assert res.best_metric is not None
