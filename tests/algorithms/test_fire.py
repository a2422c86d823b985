"""Unit tests of FIRE PBT's decisions on hand-built snapshots."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firepbt.algorithms import algorithm_from_config
from firepbt.algorithms.base import (
    EVALUATOR,
    MEMBER,
    Continue,
    Decision,
    Exploit,
    Replace,
    Role,
    Snapshot,
    WorkerView,
)
from firepbt.algorithms.effects import Annotate, Overwrite, Start, Stop
from firepbt.algorithms.fire import (
    RANDOM_CHILD,
    EvaluatorRecord,
    FirePBT,
    MemberRecord,
    SetFitness,
    StartEvaluator,
    StopEvaluator,
    Transfer,
    _Round,
)
from firepbt.algorithms.pbt import PBT
from firepbt.errors import ConfigError
from firepbt.space import ExploreConfig, Space, Uniform

SPACE = Space(h=Uniform(0.0, 2.0))
INTERVAL = 20
# A curve that climbs fast from below a child curve of 0.0, 0.1, ..., 1.1: after the overlap it
# beats the child at all 11 aligned points (p = 2**-11) and climbs higher (Δ > 0).
CHILD = tuple(0.1 * t for t in range(12))
FAST = (-0.05, *(0.2 * t for t in range(1, 12)))
FASTER = (-0.05, *(0.3 * t for t in range(1, 12)))


def member(wid: int, k: int, curve: tuple[float, ...] = (0.0,), **kw: Any) -> WorkerView:
    kw.setdefault("step", 2 * INTERVAL)
    kw.setdefault("checkpoint", 100 + wid)
    kw.setdefault("hparams", {"h": 1.0 + wid / 100})
    return WorkerView(wid, MEMBER, k, curve=curve, **kw)


def evaluator(
    wid: int,
    parent: int,
    child: int,
    curve: tuple[float, ...] = (),
    *,
    k: int = 2,
    trained: int = INTERVAL,
    parent_ow: int = 0,
    child_ow: int = 0,
) -> WorkerView:
    info = {
        "parent": parent,
        "child": child,
        "parent_overwrites": parent_ow,
        "child_overwrites": child_ow,
        "start_step": 40,
        "started_tick": 1,
    }
    return WorkerView(
        wid, EVALUATOR, k, {"h": 0.5}, 40 + trained, 200 + wid, curve, 1, "active", info
    )


def idle(wid: int) -> WorkerView:
    return WorkerView(wid, EVALUATOR, 0, {}, 0, None, status="idle")


def snap(workers: list[WorkerView], ready: list[int], total: int = 1000) -> Snapshot:
    return Snapshot({w.id: w for w in workers}, tuple(ready), 7, SPACE, INTERVAL, total)


def fire(**kw: Any) -> FirePBT:
    kw.setdefault("population", 8)
    kw.setdefault("subpop_sizes", (3, 3))
    kw.setdefault("smoother", "ema")
    return FirePBT(**kw)


def decide(alg: FirePBT, s: Snapshot, seed: int = 0) -> list[Decision]:
    return alg.decide(s, None, np.random.default_rng(seed))[0]


def of(decisions: list[Decision], kind: type) -> list[Any]:
    return [d for d in decisions if type(d) is kind]


# --- topology and configuration ------------------------------------------------------------


def test_default_split_is_8_8_6() -> None:
    alg = FirePBT()
    assert (alg.sizes, alg.n_evaluators) == ((8, 8), 6)
    roles = alg.topology()
    assert roles == [Role(MEMBER, 1)] * 8 + [Role(MEMBER, 2)] * 8 + [Role(EVALUATOR, 0)] * 6


def test_three_subpops_split_members_evenly() -> None:
    alg = FirePBT(n_subpops=3)
    assert (alg.sizes, alg.n_evaluators) == ((6, 5, 5), 6)
    assert [r.subpop for r in alg.topology()] == [1] * 6 + [2] * 5 + [3] * 5 + [0] * 6


def test_explicit_sizes_take_the_rest_of_the_budget() -> None:
    assert fire(population=9, subpop_sizes=(2, 3, 2)).n_evaluators == 2
    assert fire(population=9, subpop_sizes=(2, 3, 2)).n_subpops == 3
    alg = FirePBT(population=10, evaluators=4)
    assert (alg.sizes, alg.n_evaluators) == ((3, 3), 4)
    assert fire(population=9, subpop_sizes=(3, 3), evaluators=3).n_evaluators == 3


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n_subpops": 1, "subpop_sizes": None}, ["n_subpops=1", "n >= 2"]),
        ({"subpop_sizes": (6,)}, ["n_subpops=1", "n >= 2"]),
        ({"subpop_sizes": (1, 3)}, ["P1 has 1", ">= 2"]),
        ({"population": 6}, ["evaluators=0", "at least 1 evaluator"]),
        ({"evaluators": 1}, ["population=8", "add up"]),
        ({"p_stat": 0.0}, ["p_stat=0.0", "(0, 1)"]),
        ({"p_stat": 1.0}, ["p_stat=1.0", "(0, 1)"]),
        ({"max_eval_intervals": 0.5}, ["max_eval_intervals=0.5", "1 interval"]),
        ({"warmup_intervals": -1}, ["warmup_intervals=-1", ">= 0"]),
        ({"smoother": "loess"}, ["smoother='loess'", "gp, ema"]),
        ({"fitness": "speed"}, ["fitness='speed'", "improvement, time_to_climb"]),
        ({"min_points": 0}, ["min_points=0", ">= 1"]),
        ({"pbt": "greedy"}, ["pbt='greedy'", "must be a PBT"]),
    ],
)
def test_bad_settings_name_the_value_and_the_rule(kwargs: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        fire(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_validate_refuses_too_few_points_per_interval() -> None:
    alg = fire()
    alg.validate(interval=20, eval_every=2, total_steps=400)  # 10 points: fine
    with pytest.raises(ConfigError, match=r"eval_every=4 .* 5 curve points .* can never pass"):
        alg.validate(interval=20, eval_every=4, total_steps=400)
    # A looser test needs fewer points: p_stat = 0.1 passes at 4/4.
    fire(p_stat=0.1).validate(interval=20, eval_every=5, total_steps=400)


def test_validate_refuses_a_warmup_longer_than_the_run() -> None:
    with pytest.raises(ConfigError, match=r"warmup_intervals=5 \(100 steps\).*never start"):
        fire(warmup_intervals=5).validate(interval=20, eval_every=2, total_steps=100)


def test_config_round_trips_through_json() -> None:
    alg = FirePBT(
        population=10,
        subpop_sizes=(3, 3, 2),
        pbt=PBT(quantile=0.5, explore=ExploreConfig(perturbation="ray")),
        p_stat=0.05,
        smoother="ema",
        fitness="time_to_climb",
    )
    cfg = json.loads(json.dumps(alg.to_config()))
    assert cfg["name"] == "fire" and isinstance(cfg["pbt"], dict)
    again = algorithm_from_config(cfg)
    assert again == alg
    assert again.to_config() == alg.to_config()
    assert again.explore_config().perturbation == "ray"


def test_budget_max_eval_and_warmup_steps() -> None:
    alg = fire(max_eval_intervals=2.5, warmup_intervals=0.5)
    assert alg.max_eval_steps(20) == 50
    assert alg.warmup_steps(20) == 10


@given(st.integers(6, 200), st.integers(2, 5))
def test_default_split_spends_the_whole_budget(population: int, n: int) -> None:
    try:
        alg = FirePBT(population=population, n_subpops=n)
    except ConfigError:
        # Only budgets too small for n sub-populations of >= 2 members may be refused.
        assert population - round(0.28 * population) < 2 * n
        return
    assert sum(alg.sizes) + alg.n_evaluators == population == len(alg.topology())
    assert max(alg.sizes) - min(alg.sizes) <= 1


# --- evaluator outcomes ---------------------------------------------------------------------


def base_population(**overrides: WorkerView) -> list[WorkerView]:
    """P1 = 0, 1, 2 (member 0 best), P2 = 3, 4, 5; evaluators 6, 7 idle."""
    workers = {
        0: member(0, 1, CHILD),
        1: member(1, 1, (0.0, 0.2)),
        2: member(2, 1, (0.0, 0.1)),
        3: member(3, 2),
        4: member(4, 2),
        5: member(5, 2),
        6: idle(6),
        7: idle(7),
    }
    for key, view in overrides.items():
        workers[int(key.lstrip("w"))] = view
    return list(workers.values())


def test_success_transfers_the_evaluator_weights_to_the_child() -> None:
    e = evaluator(6, parent=3, child=0, curve=FAST, trained=2 * INTERVAL)
    out = decide(fire(), snap(base_population(w6=e), ready=[6]))
    (transfer,) = of(out, Transfer)
    assert (transfer.worker, transfer.parent, transfer.child) == (6, 3, 0)
    assert transfer.checkpoint == e.checkpoint
    assert transfer.p_value == pytest.approx(0.5**11)
    assert transfer.delta == pytest.approx(max(FAST) - max(CHILD[:11]))
    assert not of(out, StopEvaluator)  # the controller stops it after the transfer


def test_stop_1_no_overlap_after_the_budget() -> None:
    below = tuple(-1.0 - 0.01 * t for t in range(12))  # never reaches the child's start
    young = evaluator(6, parent=3, child=0, curve=below, trained=2 * INTERVAL)
    old = evaluator(7, parent=4, child=0, curve=below, trained=3 * INTERVAL)
    out = decide(fire(), snap(base_population(w6=young, w7=old), ready=[6, 7]))
    assert Continue(6) in out
    assert StopEvaluator(7, "no_overlap", None, 0.0) in out


def test_stop_2_p_value_above_the_falling_threshold() -> None:
    # Same curve as the child: 0 wins out of 12, p = 1 > every threshold once T > 0 ...
    same = evaluator(6, parent=3, child=0, curve=CHILD, trained=INTERVAL)
    (stop,) = of(decide(fire(), snap(base_population(w6=same), ready=[6])), StopEvaluator)
    assert (stop.worker, stop.reason, stop.p_value, stop.delta) == (6, "p_value", 1.0, 0.0)
    # ... but 10 wins of 12 (p = 79 / 4096 = 0.019) only stops it once the threshold has
    # fallen to p_stat: 0.343 after 2 intervals, 0.01 after 3.
    ten = (*CHILD[:2], *(v + 0.05 for v in CHILD[2:]))
    for trained, expected in ((2 * INTERVAL, "continue"), (3 * INTERVAL, "p_value")):
        e = evaluator(6, parent=3, child=0, curve=ten, trained=trained)
        out = decide(fire(), snap(base_population(w6=e), ready=[6]))
        stops = of(out, StopEvaluator)
        assert [d.reason for d in stops] == ([] if expected == "continue" else ["p_value"])
        assert all(d.p_value == pytest.approx(79 / 4096) for d in stops)


@pytest.mark.parametrize("who", ["parent", "child"])
def test_stop_3_when_parent_or_child_was_overwritten(who: str) -> None:
    kw = {"parent_ow": 1} if who == "parent" else {"child_ow": 1}
    e = evaluator(6, parent=3, child=0, curve=FAST, trained=2 * INTERVAL, **kw)
    out = decide(fire(), snap(base_population(w6=e), ready=[6]))
    assert StopEvaluator(6, "overwritten") in out
    assert not of(out, Transfer)  # even a winning curve is void once the weights changed


def test_largest_delta_wins_when_several_succeed_on_one_child() -> None:
    slow = evaluator(6, parent=3, child=0, curve=FAST, trained=2 * INTERVAL)
    fast = evaluator(7, parent=4, child=0, curve=FASTER, trained=2 * INTERVAL)
    workers = base_population(w6=slow, w7=fast)
    out = decide(fire(), snap(workers, ready=[6, 7]))
    (transfer,) = of(out, Transfer)
    assert (transfer.worker, transfer.parent) == (7, 4)
    (stop,) = [d for d in of(out, StopEvaluator) if d.worker == 6]
    assert stop.reason == "superseded" and stop.delta < transfer.delta
    # The order in which they became ready does not matter.
    assert of(decide(fire(), snap(workers, ready=[7, 6])), Transfer) == [transfer]


def test_successes_on_different_children_are_all_applied() -> None:
    a = evaluator(6, parent=3, child=0, curve=FAST, trained=2 * INTERVAL)
    b = evaluator(7, parent=4, child=1, curve=FAST, trained=2 * INTERVAL)
    workers = base_population(w6=a, w7=b, w1=member(1, 1, CHILD))
    out = decide(fire(), snap(workers, ready=[6, 7]))
    assert sorted(t.child for t in of(out, Transfer)) == [0, 1]


def test_a_transfer_stops_other_evaluators_on_that_child_at_once() -> None:
    winner = evaluator(6, parent=3, child=0, curve=FAST, trained=2 * INTERVAL)
    running = evaluator(7, parent=4, child=0, curve=(0.0, 0.1), trained=INTERVAL)
    out = decide(fire(), snap(base_population(w6=winner, w7=running), ready=[6]))
    assert of(out, Transfer)[0].worker == 6
    assert StopEvaluator(7, "overwritten") in out


# --- exploit inside sub-populations ---------------------------------------------------------


def test_p1_exploit_stops_the_evaluator_whose_child_it_overwrote() -> None:
    # Member 2 is P1's worst; the running evaluator 6 (not ready) compares against it.
    e = evaluator(6, parent=3, child=2, curve=(0.0, 0.1, 0.2), trained=INTERVAL)
    out = decide(fire(), snap(base_population(w6=e), ready=[2, 7]))
    (exploit,) = of(out, Exploit)
    assert (exploit.worker, exploit.donor) == (2, 0)
    assert StopEvaluator(6, "overwritten") in out
    # Freed in the same call, both evaluators restart on a child other than the exploited one.
    starts = of(out, StartEvaluator)
    assert {s.worker for s in starts} == {6, 7}
    assert all(s.child == 0 for s in starts)
    assert out.index(StopEvaluator(6, "overwritten")) < out.index(starts[0])


def test_transfer_target_skips_its_own_exploit() -> None:
    # Member 0 is ready and worst in P1 by its stale curve, but it has just won a transfer.
    workers = base_population(
        w0=member(0, 1, tuple(0.005 * t for t in range(12))),
        w1=member(1, 1, CHILD),
        w6=evaluator(6, parent=3, child=0, curve=FAST, trained=2 * INTERVAL),
    )
    out = decide(fire(), snap(workers, ready=[0, 6]))
    assert of(out, Transfer) and not of(out, Exploit)
    assert Continue(0) in out


def p2_with_two_evaluators(**overrides: WorkerView) -> list[WorkerView]:
    """P2 = 3, 4, 5, 8; evaluators 6 (parent 3, climbs to 3.0) and 7 (parent 4, to 1.5)."""
    workers = base_population(
        w4=member(4, 2, info={"last_evaluated": 0}),
        w5=member(5, 2, info={"last_evaluated": 3}),
        w6=evaluator(6, parent=3, child=0, curve=(0.0, 1.0, 2.0, 3.0)),
        w7=evaluator(7, parent=4, child=0, curve=(0.0, 0.5, 1.0, 1.5)),
    )
    workers += [member(8, 2), idle(9)]
    by_id = {w.id: w for w in workers}
    for key, view in overrides.items():
        by_id[int(key.lstrip("w"))] = view
    return list(by_id.values())


def test_parent_subpop_ranks_by_fire_fitness() -> None:
    alg = fire(population=10, subpop_sizes=(3, 4), pbt=PBT(quantile=0.5))
    out = decide(alg, snap(p2_with_two_evaluators(), ready=[4, 5, 9]))
    # Δ(A, B) = 3.0 - 1.5 and Δ(B, A) = 1.5 - 3.0 over the same 4 aligned points.
    assert of(out, SetFitness)[:2] == [SetFitness(3, 1.5), SetFitness(4, -1.5)]
    (exploit,) = of(out, Exploit)
    assert (exploit.worker, exploit.donor, exploit.fitness, exploit.donor_fitness) == (
        4,
        3,
        -1.5,
        1.5,
    )
    assert Continue(5, None) in out  # no evaluator, no fitness, no exploit
    # The exploited parent's FIRE fitness described weights that are gone.
    assert of(out, SetFitness)[-1] == SetFitness(4, None)
    # Its evaluator stops; the two free evaluators go to the least recently evaluated parents,
    # the just-exploited parent 4 last although it was evaluated longest ago.
    assert StopEvaluator(7, "overwritten") in out
    starts = of(out, StartEvaluator)
    assert [(s.worker, s.parent) for s in starts] == [(7, 8), (9, 5)]


def test_members_without_fitness_do_not_exploit() -> None:
    alg = fire(population=10, subpop_sizes=(3, 4), pbt=PBT(quantile=0.5))
    # Evaluator 7 has too few points to give its parent a fitness: only parent 3 is ranked.
    workers = p2_with_two_evaluators(w7=evaluator(7, parent=4, child=0, curve=(0.0, 0.5)))
    out = decide(alg, snap(workers, ready=[3, 4]))
    assert of(out, SetFitness) == [SetFitness(3, 0.0)]
    assert not of(out, Exploit)
    assert Continue(3, 0.0) in out and Continue(4, None) in out


def test_an_unchanged_fire_fitness_is_not_written_again() -> None:
    """Member 3's recorded FIRE fitness is already 1.5: only member 4's value is written."""
    alg = fire(population=10, subpop_sizes=(3, 4), pbt=PBT(quantile=0.5))
    workers = p2_with_two_evaluators(w3=member(3, 2, info={"fire_fitness": 1.5}))
    out = decide(alg, snap(workers, ready=[5]))
    assert of(out, SetFitness) == [SetFitness(4, -1.5)]


# --- assigning evaluators -------------------------------------------------------------------


def test_least_recently_evaluated_parent_first() -> None:
    workers = base_population(
        w3=member(3, 2, info={"last_evaluated": 4}),
        w4=member(4, 2),
        w5=member(5, 2, info={"last_evaluated": 2}),
    )
    out = decide(fire(), snap(workers, ready=[6, 7]))
    starts = of(out, StartEvaluator)
    assert [(s.worker, s.parent) for s in starts] == [(6, 4), (7, 5)]
    assert all(s.parent_checkpoint == 100 + s.parent for s in starts)


@pytest.mark.parametrize(("order", "parents"), [("least_recent", [3, 4]), ("fittest", [5, 3])])
def test_parent_order_breaks_ties_among_equally_recent_parents(
        order: str, parents: list[int]) -> None:
    # 3, 4 and 5 were never evaluated; 5 has the best task fitness, 4 none (ranks last).
    workers = base_population(
        w3=member(3, 2, (0.0, 1.0)),
        w4=member(4, 2, (float("nan"),)),
        w5=member(5, 2, (0.0, 2.0)),
    )
    starts = of(decide(fire(parent_order=order), snap(workers, ready=[6, 7])), StartEvaluator)
    assert [s.parent for s in starts] == parents


def test_parent_order_never_overrides_least_recently_evaluated() -> None:
    workers = base_population(
        w3=member(3, 2, (0.0, 1.0)),
        w4=member(4, 2, (0.0, 0.5)),
        w5=member(5, 2, (0.0, 2.0), info={"last_evaluated": 2}),
    )
    starts = of(decide(fire(parent_order="fittest"), snap(workers, ready=[6, 7])),
                StartEvaluator)
    assert [s.parent for s in starts] == [3, 4]
    with pytest.raises(ConfigError, match="parent_order='best'"):
        FirePBT(parent_order="best")
    assert algorithm_from_config(fire(parent_order="fittest").to_config()).parent_order == (
        "fittest")


def test_evaluator_records_are_parsed_once_per_annotation_across_calls() -> None:
    state = fire().init_state(fire().topology(), np.random.default_rng(0))
    first = evaluator(6, parent=3, child=0, curve=(0.1,))
    record = _Round(state).record(first)
    assert record.parent == 3
    # A later snapshot: the evaluator trained on, its annotation is the same object.
    trained = replace(first, curve=(0.1, 0.2), step=first.step + INTERVAL)
    assert _Round(state).record(trained) is record
    # It started again on another parent: a new annotation, parsed afresh.
    restarted = evaluator(6, parent=4, child=1, parent_ow=2)
    assert (_Round(state).record(restarted).parent,
            _Round(state).record(restarted).parent_overwrites) == (4, 2)


def test_parents_under_evaluation_or_in_warmup_are_skipped() -> None:
    workers = base_population(
        w3=member(3, 2, step=INTERVAL - 1),  # still warming up
        w6=evaluator(6, parent=4, child=0, curve=(0.0, 0.1)),
    )
    (start,) = of(decide(fire(), snap(workers, ready=[7])), StartEvaluator)
    assert (start.worker, start.parent) == (7, 5)


def test_child_is_the_best_p1_member_with_its_hparams() -> None:
    workers = base_population(w1=member(1, 1, (0.0, 5.0), hparams={"h": 0.3}))
    starts = of(decide(fire(), snap(workers, ready=[6, 7])), StartEvaluator)
    assert [(s.child, s.hparams) for s in starts] == [(1, {"h": 0.3})] * 2


def test_child_excludes_the_member_that_just_took_a_transfer() -> None:
    e = evaluator(6, parent=3, child=0, curve=FAST, trained=2 * INTERVAL)
    out = decide(fire(), snap(base_population(w6=e), ready=[6, 7]))
    starts = of(out, StartEvaluator)
    assert starts and all(s.child == 1 for s in starts)  # 0 was best but was just replaced


def test_child_in_a_parent_subpop_is_chosen_by_fire_fitness() -> None:
    alg = fire(population=9, subpop_sizes=(2, 3, 2))
    workers = [
        member(0, 1, CHILD),
        member(1, 1),
        member(2, 2, info={"fire_fitness": 0.4}),
        member(3, 2, info={"fire_fitness": 2.0}),
        member(4, 2, info={"fire_fitness": None}),
        member(5, 3, info={"last_evaluated": 1}),
        member(6, 3),
        idle(7),
        idle(8),
    ]
    starts = of(decide(alg, snap(workers, ready=[7, 8])), StartEvaluator)
    # Level 3 parents (6 never evaluated, then 5) take P2's best; level 2 parents take P1's.
    assert [(s.worker, s.parent, s.child) for s in starts] == [(7, 2, 0), (8, 3, 0)]
    later = [
        *workers[:2],
        *(
            member(
                i, 2, info={"fire_fitness": workers[i].info["fire_fitness"], "last_evaluated": 5}
            )
            for i in (2, 3, 4)
        ),
        *workers[5:],
    ]
    starts = of(decide(alg, snap(later, ready=[7, 8])), StartEvaluator)
    assert [(s.worker, s.parent, s.child) for s in starts] == [(7, 6, 3), (8, 5, 3)]


def test_without_any_fitness_all_evaluators_share_one_random_child() -> None:
    alg = fire(warmup_intervals=0)
    no_curves = [member(i, 1, ()) for i in range(3)]
    workers = base_population(w0=no_curves[0], w1=no_curves[1], w2=no_curves[2])
    chosen = set()
    for seed in range(20):
        starts = of(decide(alg, snap(workers, ready=[6, 7]), seed), StartEvaluator)
        assert len(starts) == 2 and starts[0].child == starts[1].child
        assert all(s.record.random_child for s in starts)
        chosen.add(starts[0].child)
    assert chosen == {0, 1, 2}  # random, not always the same member
    # A later evaluator reuses the running evaluator's random child.
    plain = evaluator(6, parent=3, child=2, curve=(0.0,))
    running = replace(plain, info={**plain.info, RANDOM_CHILD: True})
    for seed in range(5):
        (start,) = of(
            decide(alg, snap([*workers[:6], running, idle(7)], [7]), seed), StartEvaluator
        )
        assert (start.child, start.record.random_child) == (2, True)


def test_a_child_chosen_by_fitness_is_not_taken_for_the_shared_random_one() -> None:
    alg = fire(warmup_intervals=0)
    no_curves = [member(i, 1, ()) for i in range(3)]
    workers = base_population(w0=no_curves[0], w1=no_curves[1], w2=no_curves[2])
    # Its child 2 was the best P1 member when it started (no random_child mark).
    running = evaluator(6, parent=3, child=2, curve=(0.0,))
    chosen = set()
    for seed in range(20):
        (start,) = of(
            decide(alg, snap([*workers[:6], running, idle(7)], [7]), seed), StartEvaluator
        )
        chosen.add(start.child)
    assert chosen == {0, 1, 2}


def test_a_child_chosen_by_fitness_carries_no_random_mark() -> None:
    workers = base_population(w1=member(1, 1, (0.0, 5.0)))
    starts = of(decide(fire(), snap(workers, ready=[6, 7])), StartEvaluator)
    assert starts and all(s.child == 1 and not s.record.random_child for s in starts)


def test_no_evaluator_starts_on_a_finished_parent() -> None:
    out = decide(fire(), snap(base_population(), ready=[6, 7], total=2 * INTERVAL))
    assert not of(out, StartEvaluator)


def test_smoothing_is_cached_across_calls_in_the_state() -> None:
    alg = fire(smoother="gp")
    e = evaluator(6, parent=3, child=0, curve=FAST[:11], trained=INTERVAL)
    s = snap(base_population(w6=e), ready=[6])
    rng = np.random.default_rng(0)
    first, state = alg.decide(s, alg.init_state(alg.topology(), rng), rng)
    misses = state.smoother.misses
    again, state = alg.decide(s, state, np.random.default_rng(0))
    assert again == first
    assert state.smoother.misses == misses and state.smoother.hits > 0
    # The memos are not saved: a resumed run rebuilds them, empty.
    assert alg.save_state(state) == {}
    assert alg.load_state({}).smoother.hits == 0


# --- FIRE's records and the generic effects its decisions come down to ----------------------


def test_a_started_evaluator_records_the_versions_and_step_it_starts_from() -> None:
    workers = base_population(w4=member(4, 2, overwrites=3))
    (start, _) = of(decide(fire(), snap(workers, ready=[6, 7])), StartEvaluator)
    # Snapshot tick 7: the controller counts the round before it applies the decisions.
    assert start.record == EvaluatorRecord(parent=3, child=0, parent_overwrites=0,
                                           child_overwrites=0, start_step=2 * INTERVAL,
                                           started_tick=8)
    start_effect, annotate = start.effects()
    assert start_effect == Start(6, 103, 3, {"h": 1.0}, 2, "start_evaluator",
                                 start.record.to_json(), {"child": 0})
    assert annotate == Annotate(3, {"last_evaluated": 8})


def test_a_parent_exploited_in_the_same_round_is_recorded_one_version_on() -> None:
    alg = fire(population=10, subpop_sizes=(3, 4), pbt=PBT(quantile=0.5))
    warming = {"step": INTERVAL - 1}  # 5 and 8 cannot be parents yet: only 4 is left
    workers = p2_with_two_evaluators(w5=member(5, 2, **warming), w8=member(8, 2, **warming))
    out = decide(alg, snap(workers, ready=[4, 9]))
    (exploit,) = of(out, Exploit)
    assert (exploit.worker, exploit.donor, exploit.donor_checkpoint) == (4, 3, 103)
    (start,) = of(out, StartEvaluator)
    # Applied after the exploit, it starts from the donor's checkpoint and version 1 of 4.
    assert (start.parent, start.parent_checkpoint) == (4, 103)
    assert (start.record.parent_overwrites, start.record.start_step) == (1, 2 * INTERVAL)


def test_records_round_trip_through_json_in_todays_stored_shape() -> None:
    rec = EvaluatorRecord(3, 0, 1, 2, 40, 7, random_child=True)
    assert rec.to_json() == {"random_child": True, "parent": 3, "child": 0,
                             "parent_overwrites": 1, "child_overwrites": 2, "start_step": 40,
                             "started_tick": 7}
    assert EvaluatorRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    assert "random_child" not in replace(rec, random_child=False).to_json()
    assert MemberRecord.from_json({}) == MemberRecord(None, -1)
    assert MemberRecord.from_json({"fire_fitness": 0.5, "last_evaluated": 4}) == \
        MemberRecord(0.5, 4)
    assert SetFitness(3, float("nan")).effects() == (Annotate(3, {"fire_fitness": None}),)
    assert not SetFitness.settles and StartEvaluator.settles


def test_a_transfer_overwrites_the_child_with_the_evaluator_curve_then_stops_it() -> None:
    overwrite, stop = Transfer(6, 3, 0, 206, 0.001, 0.5).effects()
    assert overwrite == Overwrite(0, 206, 3, "transfer", None,
                                  {"evaluator": 6, "p_value": 0.001, "delta": 0.5},
                                  curve_from=6)
    assert stop == Stop(6, "stop_evaluator",
                        {"reason": "success", "p_value": 0.001, "delta": 0.5})
    assert fire().retire(idle(7), "end") == [StopEvaluator(7, "end")]


# --- replacing a persistently failed member --------------------------------------------------


def test_a_failed_parent_restarts_from_the_best_peer_by_fire_fitness() -> None:
    # By task fitness 5 is P2's best peer; by FIRE fitness, which ranks P2, it is 4.
    workers = base_population(
        w3=member(3, 2, (0.0,), info={"fire_fitness": 0.9}),
        w4=member(4, 2, (0.1,), info={"fire_fitness": 2.0}),
        w5=member(5, 2, (5.0,), info={"fire_fitness": -1.0}),
    )
    s = snap(workers, ready=[3])
    out, _ = fire().replace(s, None, 3, "boom", np.random.default_rng(0))
    clear, rep = out
    assert clear == SetFitness(3, None)  # it described the lost weights
    assert isinstance(rep, Replace) and (rep.donor, rep.donor_checkpoint) == (4, 104)
    # Without any FIRE fitness in P2 the task fitness decides, as in P1.
    plain = base_population(w3=member(3, 2, (0.0,)), w4=member(4, 2, (0.1,)),
                            w5=member(5, 2, (5.0,)))
    _, rep = fire().replace(snap(plain, [3]), None, 3, "boom", np.random.default_rng(0))[0]
    assert isinstance(rep, Replace) and rep.donor == 5
    (p1,) = fire().replace(snap(workers, [1]), None, 1, "boom", np.random.default_rng(0))[0]
    assert isinstance(p1, Replace) and p1.donor == 0  # P1: the best task fitness


def test_parent_factor_is_validated_and_round_trips() -> None:
    fire = FirePBT(population=22, parent_factor=2.0)
    assert fire.parent_pbt.explore.factor == 2.0 and fire.pbt.explore.factor == 1.2
    assert FirePBT(population=22) == fire  # the default (robustness Decision)
    same = FirePBT(population=22, parent_factor=None)
    assert same.parent_pbt is same.pbt
    assert algorithm_from_config(fire.to_config()) == fire
    assert algorithm_from_config(same.to_config()) == same
    for bad in (1.0, 0.5, float("inf"), True):
        with pytest.raises(ConfigError, match="parent_factor="):
            FirePBT(parent_factor=bad)
    ray = FirePBT(parent_factor=1.5, pbt=PBT(explore=ExploreConfig(perturbation="ray")))
    assert ray.parent_pbt.explore.ray_factors == (1.5, 1 / 1.5)
    assert ray.pbt.explore.ray_factors == (1.2, 0.8)


def test_transfer_to_is_validated() -> None:
    assert FirePBT().transfer_to == "child"
    with pytest.raises(ConfigError, match="transfer_to='best'"):
        FirePBT(transfer_to="best")
