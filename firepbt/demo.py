"""The README's main job: FIRE PBT beside PBT and random search on the noisy quadratic model
(where greedy PBT decays the learning rate too early), then PBT on real Fashion-MNIST; ends with
HTML reports."""

from __future__ import annotations

import time
from pathlib import Path

from firepbt.algorithms import PBT, RandomSearch
from firepbt.algorithms.fire import FirePBT
from firepbt.api import run
from firepbt.report import write_comparison, write_report


def _fresh(path: Path) -> str:
    """A new store path (a previous demo's store would otherwise be resumed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    ckpt = path.with_suffix(".ckpt")
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    return str(path)


def demo(out: Path, quick: bool = False, workers: int = 2) -> dict[str, Path]:
    """Run the demo into folder ``out``; returns the report paths."""
    out.mkdir(parents=True, exist_ok=True)
    budget = 11 if quick else 22  # FIRE: members + evaluators; PBT and random get the same
    nqm_steps = 600 if quick else 2000
    methods = {
        "FIRE PBT": FirePBT(population=budget),
        "PBT": PBT(population=budget),
        "random search": RandomSearch(population=budget),
    }
    stores = {}
    print(f"1/2 noisy quadratic model, lr schedule, {budget} workers per method "
          f"(equal worker-steps)", flush=True)
    for label, algorithm in methods.items():
        t0 = time.perf_counter()
        path = _fresh(out / f"nqm-{algorithm.name}.db")
        res = run("nqm", algorithm=algorithm, steps=nqm_steps, store=path,
                  executor="inprocess", mode="sync", seed=0)
        stores[label] = path
        loss = -res.best_metric if res.best_metric is not None else float("nan")
        print(f"  {label:>14}: final loss of the best member {loss:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    nqm_report = write_comparison(stores, out / "nqm-comparison.html",
                                  title="FIRE PBT vs PBT vs random search: NQM learning rate")
    print(f"  report: {nqm_report}")

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
