"""Exact unit tests of PBT and random search decisions on hand-built snapshots."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firepbt.algorithms.base import (
    Continue,
    Exploit,
    FitnessTable,
    Snapshot,
    WorkerView,
)
from firepbt.algorithms.pbt import PBT, equal_step_table, fitness_at, infer_eval_every
from firepbt.algorithms.random_search import RandomSearch
from firepbt.errors import ConfigError
from firepbt.space import ExploreConfig, LogUniform, Space

SPACE = Space(lr=LogUniform(1e-3, 1.0))


def member(wid: int, fitness: float | None, *, step: int = 100, curve: tuple | None = None,
           lr: float = 0.1) -> WorkerView:
    return WorkerView(
        id=wid, role="member", subpop=1, hparams={"lr": lr}, step=step, checkpoint=100 + wid,
        curve=curve if curve is not None else (fitness,),
    )


def snapshot(workers: list[WorkerView], ready: list[int]) -> Snapshot:
    return Snapshot(
        workers={w.id: w for w in workers}, ready=tuple(ready), tick=0, space=SPACE,
        interval=10, total_steps=1000,
    )


def decide_one(alg: PBT, snap: Snapshot, seed: int = 0):
    (d,) = alg.decide(snap, None, np.random.default_rng(seed))[0]
    return d


def test_truncation_bottom_quarter_copies_one_of_the_top_quarter() -> None:
    workers = [member(i, float(i)) for i in range(8)]  # member 7 best, 0 worst
    alg = PBT(population=8)  # q = 0.25: 2 at the bottom copy one of the 2 at the top
    for worst in (0, 1):
        donors = {decide_one(alg, snapshot(workers, [worst]), s).donor for s in range(40)}
        assert donors == {6, 7}
    for middle in (2, 3, 4, 5, 6, 7):
        assert isinstance(decide_one(alg, snapshot(workers, [middle])), Continue)


def test_exploit_carries_donor_checkpoint_and_explored_hparams() -> None:
    workers = [member(0, 0.0, lr=0.5), member(1, 1.0, lr=0.1)]
    d = decide_one(PBT(population=2, explore=ExploreConfig(resample_probability=0.0)),
                   snapshot(workers, [0]))
    assert isinstance(d, Exploit)
    assert (d.donor, d.donor_checkpoint) == (1, 101)
    assert d.new_hparams["lr"] == pytest.approx(0.1 * 1.2) or \
        d.new_hparams["lr"] == pytest.approx(0.1 / 1.2)
    assert d.ops["lr"] in ("mul 1.2", "mul 0.8333")
    assert (d.fitness, d.donor_fitness) == (0.0, 1.0)


def test_quantile_zero_and_single_member_never_exploit() -> None:
    workers = [member(i, float(i)) for i in range(4)]
    assert isinstance(decide_one(PBT(population=4, quantile=0.0), snapshot(workers, [0])),
                      Continue)
    assert isinstance(decide_one(PBT(population=1), snapshot([member(0, 1.0)], [0])), Continue)


def test_burn_in_blocks_exploit() -> None:
    workers = [member(0, 0.0, step=50), member(1, 1.0, step=50)]
    assert isinstance(decide_one(PBT(population=2, burn_in=60), snapshot(workers, [0])),
                      Continue)
    assert isinstance(decide_one(PBT(population=2, burn_in=50), snapshot(workers, [0])), Exploit)


@pytest.mark.parametrize("bad", [None, math.nan])
def test_invalid_fitness_ranks_last_and_is_never_a_donor(bad: float | None) -> None:
    workers = [member(0, bad), member(1, -5.0), member(2, 3.0), member(3, 2.0)]
    alg = PBT(population=4)
    d = decide_one(alg, snapshot(workers, [0]))
    assert isinstance(d, Exploit) and d.donor == 2
    # The invalid member is never chosen, even by the tournament rule.
    for s in range(30):
        for wid in (1, 2, 3):
            dd = decide_one(PBT(population=4, exploit="tournament"), snapshot(workers, [wid]), s)
            assert not isinstance(dd, Exploit) or dd.donor != 0


def rank_order(ids: Sequence[int], fitness: Sequence[float | None]) -> list[int]:
    """The reference order the fitness table must agree with: ids from best to worst.

    None/NaN rank last; ties broken by id (deterministic).
    """

    def key(pair: tuple[int, float | None]) -> tuple[int, float, int]:
        wid, f = pair
        if f is None or math.isnan(f):
            return (1, 0.0, wid)
        return (0, -f, wid)

    return [wid for wid, _ in sorted(zip(ids, fitness, strict=True), key=key)]


def test_all_invalid_means_no_exploit() -> None:
    workers = [member(i, None) for i in range(4)]
    assert all(isinstance(decide_one(PBT(population=4), snapshot(workers, [i])), Continue)
               for i in range(4))


def test_infinities_follow_their_sign_in_the_ranking() -> None:
    assert rank_order([0, 1, 2, 3], [-math.inf, 1.0, math.inf, None]) == [2, 1, 0, 3]


def test_ties_are_broken_by_id() -> None:
    table = FitnessTable.build([3, 5, 7, 9], [1.0, 2.0, 2.0, 1.0])
    assert [table.position(i) for i in (3, 5, 7, 9)] == [2, 0, 1, 3]
    assert table.top(2).tolist() == [5, 7]
    assert rank_order([3, 5, 7, 9], [1.0, 2.0, 2.0, 1.0]) == [5, 7, 3, 9]


@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=1, max_size=30),
       st.integers(1, 30))
@settings(max_examples=200, deadline=None)
def test_table_top_and_position_agree_with_a_full_sort(values: list, n: int) -> None:
    ids = list(range(0, 2 * len(values), 2))
    table = FitnessTable.build(ids, values)
    order = rank_order(ids, values)
    assert [table.position(i) for i in order] == list(range(len(ids)))
    valid = [i for i, v in zip(ids, values, strict=True) if v is not None and not math.isnan(v)]
    assert table.top(n).tolist() == [i for i in order if i in valid][:n]


def test_tournament_copies_only_a_better_rival() -> None:
    workers = [member(0, 0.0), member(1, 1.0)]
    d0 = decide_one(PBT(population=2, exploit="tournament"), snapshot(workers, [0]))
    d1 = decide_one(PBT(population=2, exploit="tournament"), snapshot(workers, [1]))
    assert isinstance(d0, Exploit) and d0.donor == 1
    assert isinstance(d1, Continue)


def test_ttest_needs_significantly_better_recent_values() -> None:
    noisy_equal = [member(0, None, curve=(1.0, 2.0, 1.5, 1.2, 1.8)),
                   member(1, None, curve=(1.1, 1.9, 1.6, 1.3, 1.7))]
    clearly_better = [member(0, None, curve=(1.0, 1.1, 0.9, 1.0, 1.05)),
                      member(1, None, curve=(3.0, 3.1, 2.9, 3.05, 3.0))]
    alg = PBT(population=2, exploit="ttest", fitness_window=5)
    assert isinstance(decide_one(alg, snapshot(noisy_equal, [0])), Continue)
    d = decide_one(alg, snapshot(clearly_better, [0]))
    assert isinstance(d, Exploit) and d.donor == 1


def test_sync_round_decides_every_ready_member_in_order() -> None:
    workers = [member(i, float(i)) for i in range(4)]
    decisions = PBT(population=4).decide(snapshot(workers, [0, 1, 2, 3]), None,
                                         np.random.default_rng(0))[0]
    assert [d.worker for d in decisions] == [0, 1, 2, 3]
    assert [type(d) for d in decisions] == [Exploit, Continue, Continue, Continue]


def test_decisions_are_a_pure_function_of_snapshot_and_seed() -> None:
    workers = [member(i, float(i % 3)) for i in range(8)]
    snap = snapshot(workers, list(range(8)))
    a = PBT(population=8).decide(snap, None, np.random.default_rng(5))[0]
    b = PBT(population=8).decide(snap, None, np.random.default_rng(5))[0]
    assert a == b


def test_random_search_never_exploits() -> None:
    workers = [member(i, float(i)) for i in range(4)]
    decisions = RandomSearch(population=4).decide(snapshot(workers, [0, 1, 2, 3]), None,
                                                  np.random.default_rng(0))[0]
    assert all(isinstance(d, Continue) for d in decisions)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"population": 0}, "population=0"),
        ({"quantile": -0.1}, "quantile=-0.1"),
        ({"exploit": "greedy"}, "exploit='greedy'"),
        ({"ttest_p": 1.0}, "ttest_p=1.0"),
        ({"fitness_window": 0}, "fitness_window=0"),
        ({"burn_in": -1}, "burn_in=-1"),
        ({"exploit": "ttest", "fitness_window": 1}, "needs >= 2 points"),
    ],
)
def test_invalid_settings_name_the_value_and_rule(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        PBT(**kwargs)
    assert needle in str(err.value)


def test_valid_minus_infinity_ranks_above_invalid_members() -> None:
    table = FitnessTable.build([1, 2, 3], [None, -math.inf, 0.0])
    assert [table.position(i) for i in (3, 2, 1)] == [0, 1, 2]
    assert table.top(3).tolist() == [3, 2]


@pytest.mark.parametrize("rule", ["truncation", "tournament"])
def test_a_finished_member_never_donates_at_a_last_ready_point(rule: str) -> None:
    # Members 6 and 7 lead but have trained all 1,000 steps: copying them at step 950 would
    # leave member 0 holding weights it never trained, reported with unused hyperparameters.
    workers = [member(i, float(i), step=950) for i in range(6)]
    workers += [member(6, 6.0, step=1000), member(7, 7.0, step=1000)]
    alg = PBT(population=8, exploit=rule)
    for s in range(40):
        d = decide_one(alg, snapshot(workers, [0]), s)
        assert isinstance(d, Continue) or d.donor < 6


def test_a_donor_with_steps_left_is_still_copied_when_the_other_finished() -> None:
    workers = [member(i, float(i), step=950) for i in range(7)] + [member(7, 7.0, step=1000)]
    donors = {decide_one(PBT(population=8), snapshot(workers, [0]), s).donor for s in range(40)}
    assert donors == {6}


# --- rank_at="equal_step": staggered asynchronous populations --------------------------------
# interval 10 (the snapshot helper), eval_every 5: two curve points per interval, so a member
# never overwritten at step 20 has 4 points, at steps 5, 10, 15, 20.


def test_fitness_at_and_eval_every_read_the_curve_by_step() -> None:
    w = member(0, None, step=20, curve=(1.0, 2.0, 3.0, 4.0))
    assert infer_eval_every(snapshot([w], [0])) == 5
    assert [fitness_at(w, t, 5) for t in (20, 15, 10, 5)] == [4.0, 3.0, 2.0, 1.0]
    assert fitness_at(w, 12, 5) == 2.0  # the newest point at or before step 12
    assert fitness_at(w, 20, 5, window=2) == 3.5
    assert fitness_at(w, 0, 5) == 1.0  # before the curve: its oldest point
    assert fitness_at(member(1, None, step=20, curve=()), 20, 5) is None
    # An overwritten member's curve starts late: the exact spacing comes from another worker.
    late = member(1, None, step=20, curve=(7.0, 8.0))
    assert infer_eval_every(snapshot([late], [1])) == 10
    assert infer_eval_every(snapshot([late, w], [1])) == 5


def staggered() -> list[WorkerView]:
    """Member 0 has just trained to step 20; members 1-3 are still at step 10.

    At step 10 member 0 was the worst (0.0) and member 3 the best (3.0); member 0's newest
    value (10.0) is above everyone's step-10 value.
    """
    return [
        member(0, None, step=20, curve=(0.0, 0.0, 5.0, 10.0)),
        member(1, None, step=10, curve=(1.0, 1.0)),
        member(2, None, step=10, curve=(2.0, 2.0)),
        member(3, None, step=10, curve=(3.0, 3.0)),
    ]


def test_equal_step_ranks_the_ready_member_at_its_lagging_peers_step() -> None:
    snap = snapshot(staggered(), [0])
    # Latest values: member 0 (10.0) looks best and never exploits.
    assert isinstance(decide_one(PBT(population=4, rank_at="latest"), snap), Continue)
    # At step 10 it is the worst of 4 (q = 0.25: bottom 1) and copies the best, member 3.
    for s in range(10):
        d = decide_one(PBT(population=4), snap, s)
        assert isinstance(d, Exploit) and d.donor == 3


def test_equal_step_reads_peers_ahead_at_the_ready_members_step() -> None:
    # Member 1 is at step 10 (ready); member 0 is ahead at 20 with a high newest value but was
    # the worst at step 10; members 2, 3 are at step 10.
    workers = [
        member(0, None, step=20, curve=(0.0, 0.5, 9.0, 9.0)),
        member(1, None, step=10, curve=(1.0, 1.0)),
        member(2, None, step=10, curve=(2.0, 2.0)),
        member(3, None, step=10, curve=(3.0, 3.0)),
    ]
    # Latest: member 1 is the worst (0 has 9.0) and exploits; at step 10, member 0 (0.5) is
    # the worst and member 1 is not in the bottom quarter.
    assert isinstance(decide_one(PBT(population=4, rank_at="latest"),
                                 snapshot(workers, [1])), Exploit)
    assert isinstance(decide_one(PBT(population=4), snapshot(workers, [1])), Continue)


def test_equal_step_leaves_out_members_without_a_point_since_their_overwrite() -> None:
    workers = [member(i, float(i), step=10, curve=(float(i), float(i))) for i in range(7)]
    workers += [member(7, None, step=10, curve=()), member(8, None, step=10, curve=())]
    # Latest: the two pointless members 7 and 8 rank last and fill both bottom places (n = 9,
    # n_q = 2), so member 0 never exploits. equal_step ranks the 7 others: member 0 is the
    # worst (position 6 of 7, 6/7 >= the whole population's cut 7/9) and copies one of the
    # top 1 of 7 (member 6); member 1 (5/7 < 7/9) does not exploit.
    assert isinstance(decide_one(PBT(population=9, rank_at="latest"),
                                 snapshot(workers, [0])), Continue)
    d = decide_one(PBT(population=9), snapshot(workers, [0]))
    assert isinstance(d, Exploit) and d.donor == 6
    assert isinstance(decide_one(PBT(population=9), snapshot(workers, [1])), Continue)


def test_equal_step_does_not_exploit_among_the_first_few_to_report() -> None:
    # Asynchronous start: members 0 and 1 have trained to step 10, members 2-7 not yet.
    workers = [member(0, None, step=10, curve=(0.0, 0.0)), member(1, None, step=10,
                                                                   curve=(1.0, 1.0))]
    workers += [member(i, None, step=0, curve=()) for i in range(2, 8)]
    # Among the 2 that reported, member 0 is the worse, but 1/2 is not in the bottom
    # quarter of 8: no exploit (a synchronous round would exploit 2 of 8, not 1 of 2).
    for s in range(10):
        assert isinstance(decide_one(PBT(population=8), snapshot(workers, [0]), s), Continue)


def test_equal_step_keeps_latest_values_of_peers_more_than_an_interval_behind() -> None:
    # Member 0 at step 30, members 1 and 2 at step 20, member 3 two intervals behind at 10.
    workers = [
        member(0, None, step=30, curve=(0.0, 0.0, 0.0, 0.0, 5.0, 10.0)),
        member(1, None, step=20, curve=(1.0, 1.0, 1.0, 1.0)),
        member(2, None, step=20, curve=(2.0, 2.0, 2.0, 2.0)),
        member(3, None, step=10, curve=(3.0, 3.0)),
    ]
    # Common step 20 (member 3 is too far behind to lower it); member 0 (0.0 at step 20) is
    # the worst and copies member 3, the best on its latest value 3.0.
    d = decide_one(PBT(population=4), snapshot(workers, [0]))
    assert isinstance(d, Exploit) and d.donor == 3
    table = equal_step_table(snapshot(workers, [0]), snapshot(workers, [0]).table(1),
                             workers[0])
    assert table.values.tolist() == [0.0, 1.0, 2.0, 3.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=9), st.integers(0, 8),
       st.sampled_from(["truncation", "tournament"]), st.integers(0, 2**31))
def test_equal_step_is_latest_when_every_member_is_at_the_same_step(
    values: list, ready: int, rule: str, seed: int
) -> None:
    workers = [member(i, v, step=20, curve=(0.0, 1.0, -1.0, v)) for i, v in enumerate(values)]
    snap = snapshot(workers, [ready % len(values)])
    a = decide_one(PBT(population=len(values), exploit=rule), snap, seed)
    b = decide_one(PBT(population=len(values), exploit=rule, rank_at="latest"), snap, seed)
    assert a == b


def test_rank_at_is_validated_and_round_trips() -> None:
    with pytest.raises(ConfigError, match="rank_at='soon'"):
        PBT(rank_at="soon")
    from firepbt.algorithms import algorithm_from_config

    assert algorithm_from_config(PBT(rank_at="latest").to_config()) == PBT(rank_at="latest")
