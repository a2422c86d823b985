"""PBT on a Hugging Face Trainer: a tiny BERT-like model on synthetic text classification.

The model is built from a ``BertConfig`` (random init, nothing downloaded). The task: a
sentence of 31 words from a 40-word vocabulary is positive when it holds more "positive" than
"negative" words; a fifth of the training labels are flipped (validation and test are clean),
so a constant lr plateaus and a schedule helps. The lines marked ``# firepbt`` are all it
takes to run an ordinary Trainer as PBT members. At the end the best member's checkpoint (a
Trainer checkpoint folder) and a plain Trainer run at the default constant lr are scored on a
held-out test set.

    python examples/hf_text.py            # 4 members x 300 steps, a few minutes here
    python examples/hf_text.py --tiny     # seconds (CI)

The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import firepbt as fp  # firepbt
from firepbt.integrations.huggingface import HF_DIR, train  # firepbt

NOISE = 0.2  # a fifth of the training labels are flipped; validation and test are clean
DEFAULT_LR = 1e-3  # a sensible constant AdamW lr for a model this small
LENGTH = 32  # [CLS] + 31 words
POSITIVE, NEGATIVE, VOCAB = range(2, 12), range(12, 22), 42
SIZES = {
    "tiny": dict(steps=30, interval=15, eval_every=5, population=2, train=512),
    "full": dict(steps=300, interval=30, eval_every=5, population=4, train=8192),
}


class Sentences(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Synthetic sentiment: label 1 when positive words outnumber negative ones."""

    def __init__(self, n: int, seed: int, noise: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        words = rng.integers(2, VOCAB, size=(n * 2, LENGTH - 1))
        pos = np.isin(words, list(POSITIVE)).sum(1)
        neg = np.isin(words, list(NEGATIVE)).sum(1)
        keep = np.flatnonzero(pos != neg)[:n]  # no ties: every label is decidable
        self.ids = torch.from_numpy(np.concatenate([np.ones((len(keep), 1), int),
                                                    words[keep]], 1))
        labels = pos[keep] > neg[keep]
        flip = rng.random(len(labels)) < noise  # noisy training labels: a constant lr plateaus
        self.labels = torch.from_numpy((labels ^ flip).astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def make_model(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=LENGTH, num_labels=2)
    return BertForSequenceClassification(config)


def accuracy(pred: Any) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def make_trainer(lr: float, seed: int, steps: int, eval_every: int, n_train: int,
                 out: str) -> Trainer:
    args = TrainingArguments(
        output_dir=out, learning_rate=lr, lr_scheduler_type="constant", seed=seed,
        max_steps=steps, per_device_train_batch_size=32, per_device_eval_batch_size=256,
        eval_strategy="steps", eval_steps=eval_every,  # firepbt: a curve point per eval
        save_strategy="no", logging_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=make_model(seed), args=args, train_dataset=Sentences(n_train, 0, NOISE),
                      eval_dataset=Sentences(500, 1), compute_metrics=accuracy)
    trainer.remove_callback(transformers.PrinterCallback)  # no metrics dict per evaluation
    return trainer


def train_fn(hparams: dict[str, Any], checkpoint: Path | None, report: Any,  # firepbt
             seed: int) -> None:
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # no bar per checkpoint written
    out = tempfile.mkdtemp(prefix="firepbt-hf-")
    trainer = make_trainer(hparams["lr"], seed, hparams["steps"], hparams["eval_every"],
                           hparams["train"], out)
    train(trainer, hparams, checkpoint, report, monitor="eval_accuracy")  # firepbt


def test_accuracy(model: BertForSequenceClassification) -> float:
    data = Sentences(2000, 2)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=data.ids, attention_mask=torch.ones_like(data.ids)).logits
    return float((logits.argmax(-1) == data.labels).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true", help="CI size: seconds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    size = SIZES["tiny" if args.tiny else "full"]
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    consts = {k: size[k] for k in ("steps", "eval_every", "train")}  # workers see the sizes
    space = fp.Space(lr=fp.LogUniform(1e-4, 1e-2), **consts)  # firepbt
    with tempfile.TemporaryDirectory(prefix="firepbt-hf-") as tmp:
        t0 = time.perf_counter()
        res = fp.run(train_fn, space, fp.PBT(population=size["population"]),  # firepbt
                     steps=size["steps"], interval=size["interval"],
                     eval_every=size["eval_every"], store=f"{tmp}/hf.db",
                     workers=args.workers, seed=args.seed)
        pbt_s = time.perf_counter() - t0
        assert res.best is not None
        ckpt = Path(res.store.checkpoint(res.store.worker(res.best).checkpoint).path)
        pbt_test = test_accuracy(BertForSequenceClassification.from_pretrained(ckpt / HF_DIR))

        # The baseline: the same Trainer at the default constant lr, no firepbt.
        base = make_trainer(DEFAULT_LR, args.seed, size["steps"], size["eval_every"],
                            size["train"], f"{tmp}/base")
        base.train()
        base_test = test_accuracy(base.model)  # type: ignore[arg-type]
    schedule = [(p.start_step, p.end_step, float(f"{p.hparams['lr']:.3g}"))
                for p in res.schedule(res.best)]
    print(f"PBT ({size['population']} members x {size['steps']} steps, {pbt_s:.0f} s): best "
          f"member {res.best}, val {res.best_metric:.4f}, test accuracy {pbt_test:.4f}")
    print(f"  lr schedule: {schedule}")
    print(f"constant lr {DEFAULT_LR} ({size['steps']} steps): test accuracy {base_test:.4f}")
    print(json.dumps({"pbt_test": pbt_test, "constant_test": base_test,
                      "pbt_val": res.best_metric, "status": res.status()}))


if __name__ == "__main__":
    main()
