"""The README's main job: FIRE PBT beside PBT and random search on the noisy quadratic model
(where greedy PBT decays the learning rate too early), then PBT on real Fashion-MNIST; ends with
HTML reports."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from firepbt.algorithms import PBT
from firepbt.api import run
from firepbt.checkpoints import default_root
from firepbt.compare import compare
from firepbt.report import write_comparison, write_report


def _fresh(path: Path) -> str:
    """A new store path (a previous demo's store would otherwise be resumed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    ckpt = default_root(path)
    if ckpt.exists():
        shutil.rmtree(ckpt)
    return str(path)


def _clear_comparison(folder: Path) -> None:
    """Remove what an earlier demo's compare() left in ``folder`` (stores, results, plan)."""
    for path in folder.glob("*-s[0-9]*"):  # fire-s0.db(-wal, .ckpt), baseline-0-s0.json, ...
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    for name in ("plan.json", "compare.json", "compare.html"):
        (folder / name).unlink(missing_ok=True)


def demo(out: Path, quick: bool = False, workers: int = 2) -> dict[str, Path]:
    """Run the demo into folder ``out``; returns the report paths."""
    out.mkdir(parents=True, exist_ok=True)
    budget = 11 if quick else 22  # FIRE: members + evaluators; PBT and random get the same
    nqm_steps = 600 if quick else 2000
    print(f"1/2 noisy quadratic model, lr schedule, {budget} workers per method "
          "(equal budget), process workers in async mode as 'firepbt run' uses them", flush=True)
    # The comparison's runs sit beside the Fashion-MNIST one, so that
    # `firepbt dashboard runs/demo/*.db` shows every run of the demo.
    _clear_comparison(out)  # a fresh comparison each time (compare() would resume it)
    summary = compare("nqm", methods=("fire", "pbt", "random"), seeds=1, workers=budget,
                      steps=nqm_steps, baselines=("lr=step(1.0, 0.1, 0.5, 0.75)",),
                      out=out, processes=workers,
                      log=lambda line: print(f"  {line}", flush=True))
    for m in summary["methods"].values():
        loss = -m["mean"] if m["mean"] is not None else float("nan")
        print(f"  {m['label']:>34}: final loss {loss:.4f}", flush=True)
    stores = {summary["methods"][m]["label"]: str(out / f"{m}-s0.db")
              for m in ("fire", "pbt", "random")}
    nqm_report = write_comparison(stores, out / "nqm-comparison.html",
                                  title="FIRE PBT vs PBT vs random search: NQM learning rate")
    print(f"  reports: {nqm_report} and {out / 'compare.html'}")

    print("2/2 Fashion-MNIST MLP (real data), PBT over lr, momentum, weight decay", flush=True)
    t0 = time.perf_counter()
    fm_path = _fresh(out / "fmnist-pbt.db")
    res = run("fmnist", algorithm=PBT(population=2 if quick else 4),
              steps=300 if quick else None, store=fm_path, workers=workers, seed=0)
    print(f"  best member {res.best}: validation accuracy {res.best_metric:.4f} "
          f"({time.perf_counter() - t0:.0f} s)")
    for piece in res.schedule(res.best) if res.best is not None else []:
        hp = ", ".join(f"{k}={v:.3g}" for k, v in sorted(piece.hparams.items())
                       if isinstance(v, float))
        print(f"    steps {piece.start_step:>5}-{piece.end_step:<5} {hp}")
    fm_report = write_report(fm_path)
    print(f"  report: {fm_report}")
    return {"nqm": nqm_report, "fmnist": fm_report}
