"""The promotion decision: better candidates are promoted, and an equal one rarely is."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

from pipelines.config import PromotionConfig
from pipelines.promotion import Decision, GainStats, PromotionPolicy

POLL_EVERY = 100  # records per arm between two checks, as the supervisor polls
SIM_SEEDS = range(50)

Gain = Callable[[random.Random], float]


def make_policy(*, paired: bool, **over: Any) -> PromotionPolicy:
    config = {"mode": "auto", "min_samples": 1000, "check_every": 1000,
              "max_samples": 20_000, **over}
    return PromotionPolicy(PromotionConfig(**config), paired=paired)


def correct(accuracy: float) -> Gain:
    return lambda rng: 1.0 if rng.random() < accuracy else 0.0


def minus_abs_error(sd: float) -> Gain:
    return lambda rng: -abs(rng.gauss(0.0, sd))


def run_stream(policy: PromotionPolicy, live_gain: Gain, candidate_gain: Gain,
               seed: int) -> Decision:
    """Feed both arms record by record and check every poll, until the policy ends."""
    rng = random.Random(seed)
    live, candidate, diffs = GainStats(), GainStats(), GainStats()
    while True:
        for _ in range(POLL_EVERY):
            g_live, g_cand = live_gain(rng), candidate_gain(rng)
            live.add(g_live)
            candidate.add(g_cand)
            diffs.add(g_cand - g_live)
        decision = policy.check(live, candidate, diffs if policy.paired else None)
        if decision is not None:
            return decision


# -- GainStats ------------------------------------------------------------------------


def test_gainstats_merge_equals_adding_all() -> None:
    rng = random.Random(1)
    parts = [[-abs(rng.gauss(0.0, 2.0)) for _ in range(n)] for n in (0, 1, 7, 300)]
    whole = GainStats()
    for part in parts:
        whole.add_many(part)
    pieces = []
    for part in parts:
        piece = GainStats()
        piece.add_many(part)
        pieces.append(piece)
    summed = GainStats.sum(pieces)
    merged = GainStats().merge(pieces[0]).merge(pieces[1]).merge(pieces[2]).merge(pieces[3])
    for combined in (summed, merged):
        assert combined.n == whole.n == 308
        assert combined.as_list() == pytest.approx(whole.as_list(), rel=1e-12)
        assert combined.variance == pytest.approx(whole.variance, rel=1e-9)


def test_gainstats_moments_match_direct_formulas() -> None:
    gains = [-0.5, -1.25, 0.0, -3.0, -0.75]
    stats = GainStats()
    stats.add_many(gains)
    mean = sum(gains) / len(gains)
    assert stats.mean == pytest.approx(mean)
    assert stats.variance == pytest.approx(
        sum((g - mean) ** 2 for g in gains) / (len(gains) - 1))


def test_gainstats_list_round_trip_is_exact() -> None:
    stats = GainStats()
    stats.add_many([1.0, 0.0, 1.0, -0.3])
    shipped = json.loads(json.dumps(stats.as_list()))
    assert GainStats.from_list(shipped) == stats
    assert GainStats.from_list(GainStats().as_list()) == GainStats()


def test_gainstats_bad_list_or_gain_raises() -> None:
    with pytest.raises(ValueError, match="expected"):
        GainStats.from_list([1.0, 2.0])
    with pytest.raises(ValueError, match="whole number"):
        GainStats.from_list([1.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        GainStats().add(math.nan)


def test_gainstats_fewer_than_two_gains_variance_zero() -> None:
    stats = GainStats()
    assert (stats.mean, stats.variance) == (0.0, 0.0)
    stats.add(-2.5)
    assert (stats.mean, stats.variance) == (-2.5, 0.0)


def test_gainstats_constant_gains_variance_zero() -> None:
    stats = GainStats()
    stats.add_many([-0.1] * 10_000)
    assert stats.variance == 0.0


# -- looks ----------------------------------------------------------------------------


def test_policy_looks_end_at_max_samples_off_grid() -> None:
    policy = make_policy(paired=False, min_samples=1000, check_every=1500, max_samples=5000)
    assert policy.looks == (1000, 2500, 4000, 5000)
    assert policy.n_looks == 4
    assert policy.alpha_per_look == pytest.approx(0.05 / 4)


def test_policy_min_equals_max_single_look() -> None:
    policy = make_policy(paired=False, min_samples=500, max_samples=500)
    assert policy.looks == (500,)
    assert policy.alpha_per_look == pytest.approx(0.05)


def test_policy_before_min_samples_returns_none_without_looking() -> None:
    policy = make_policy(paired=False)
    live, candidate = GainStats(999, 999.0, 999.0), GainStats(5000, 0.0, 0.0)
    assert policy.check(live, candidate) is None
    assert policy.last is None and not policy.finished


def test_policy_between_looks_returns_none_and_keeps_last() -> None:
    policy = make_policy(paired=False, max_samples=3000)
    live, candidate = GainStats(1000, 800.0, 800.0), GainStats(1000, 800.0, 800.0)
    assert policy.check(live, candidate) is None
    assert policy.last is not None
    assert (policy.last.look, policy.last.outcome, policy.last.final) == (1, "keep", False)
    live.n = candidate.n = 1999             # same sums: the look is not due again yet
    assert policy.check(live, candidate) is None
    assert policy.last.look == 1


def test_policy_skipped_looks_count_as_latest_reached() -> None:
    policy = make_policy(paired=False, max_samples=10_000)
    same = GainStats(3500, 2800.0, 2800.0)
    assert policy.check(same, same) is None
    assert policy.last is not None and policy.last.look == 3   # looks at 1000, 2000, 3000
    jump = GainStats(50_000, 40_000.0, 40_000.0)
    decision = policy.check(jump, jump)
    assert decision is not None
    assert (decision.look, decision.n_looks, decision.outcome) == (10, 10, "keep")
    assert decision.n_samples == 50_000


def test_policy_paired_without_differences_raises() -> None:
    with pytest.raises(ValueError, match="paired"):
        make_policy(paired=True).check(GainStats(), GainStats())
    with pytest.raises(ValueError, match="two-sample"):
        make_policy(paired=False).check(GainStats(), GainStats(), GainStats())


def test_policy_reset_evaluates_again() -> None:
    policy = make_policy(paired=False)
    live, better = GainStats(1000, 0.0, 0.0), GainStats(1000, 1000.0, 1000.0)
    assert policy.check(live, better) is not None and policy.finished
    assert policy.check(live, better) is None
    policy.reset()
    assert not policy.finished and policy.last is None
    decision = policy.check(live, better)
    assert decision is not None and decision.outcome == "promote"


# -- decisions ------------------------------------------------------------------------


@pytest.mark.parametrize("paired", [True, False])
def test_policy_clearly_better_classifier_promoted_with_details(paired: bool) -> None:
    policy = make_policy(paired=paired)
    decision = run_stream(policy, correct(0.75), correct(0.85), seed=7)
    assert decision.outcome == "promote"
    assert decision.test == ("paired-z" if paired else "welch-z")
    assert decision.look == 1 and decision.n_looks == 20
    assert policy.finished and policy.last is decision
    details = decision.details()
    assert json.loads(json.dumps(details, allow_nan=False)) == details
    assert details == {f.name: getattr(decision, f.name) for f in fields(decision)}
    assert decision.n_live == decision.n_candidate == decision.n_samples == 1000
    assert decision.live_mean == pytest.approx(0.75, abs=0.04)
    assert decision.candidate_mean == pytest.approx(0.85, abs=0.04)
    assert decision.difference == pytest.approx(decision.candidate_mean - decision.live_mean)
    assert decision.z > 3 and decision.p_value <= decision.alpha_per_look == 0.0025
    assert decision.margin == 0.0 and decision.false_promotion_rate == 0.05


@pytest.mark.parametrize("paired", [True, False])
def test_policy_better_by_less_than_margin_kept_at_max_samples(paired: bool) -> None:
    policy = make_policy(paired=paired, margin=0.05, max_samples=5000)
    decision = run_stream(policy, correct(0.78), correct(0.80), seed=3)
    assert decision.outcome == "keep"
    assert decision.look == decision.n_looks == 5
    assert decision.n_samples >= 5000 and decision.margin == 0.05
    assert policy.finished


@pytest.mark.parametrize("paired", [True, False])
def test_policy_worse_candidate_kept(paired: bool) -> None:
    policy = make_policy(paired=paired, max_samples=5000)
    decision = run_stream(policy, correct(0.8), correct(0.7), seed=11)
    assert decision.outcome == "keep" and decision.look == decision.n_looks
    assert decision.difference < 0 and decision.p_value > 0.5


@pytest.mark.parametrize("paired", [True, False])
def test_policy_regressor_smaller_errors_promoted(paired: bool) -> None:
    policy = make_policy(paired=paired)
    decision = run_stream(policy, minus_abs_error(1.0), minus_abs_error(0.7), seed=5)
    assert decision.outcome == "promote"
    # The mean absolute error of a normal error is sd * sqrt(2 / pi).
    assert decision.live_mean == pytest.approx(-math.sqrt(2 / math.pi), rel=0.1)
    assert decision.candidate_mean == pytest.approx(-0.7 * math.sqrt(2 / math.pi), rel=0.1)


@pytest.mark.parametrize("paired", [True, False])
def test_policy_regressor_equal_errors_kept(paired: bool) -> None:
    policy = make_policy(paired=paired, max_samples=3000)
    decision = run_stream(policy, minus_abs_error(1.0), minus_abs_error(1.0), seed=2)
    assert decision.outcome == "keep" and decision.look == 3


def test_policy_zero_variance_equal_arms_kept_with_p_one() -> None:
    policy = make_policy(paired=False, max_samples=1000)
    same = GainStats(1000, 1000.0, 1000.0)
    decision = policy.check(same, same)
    assert decision is not None and decision.outcome == "keep"
    assert decision.z == -math.inf and decision.p_value == 1.0
    assert decision.details()["z"] is None


@pytest.mark.parametrize("paired", [True, False])
def test_policy_zero_variance_better_candidate_promoted_with_p_zero(paired: bool) -> None:
    policy = make_policy(paired=paired, margin=0.5)
    live, candidate = GainStats(1000, 0.0, 0.0), GainStats(1000, 1000.0, 1000.0)
    diffs = GainStats(1000, 1000.0, 1000.0) if paired else None
    decision = policy.check(live, candidate, diffs)
    assert decision is not None and decision.outcome == "promote"
    assert decision.z == math.inf and decision.p_value == 0.0
    json.dumps(decision.details(), allow_nan=False)


def test_policy_zero_variance_difference_equal_to_margin_kept() -> None:
    policy = make_policy(paired=True, margin=0.25, max_samples=1000)
    diffs = GainStats()
    diffs.add_many([0.25] * 1000)
    decision = policy.check(GainStats(), GainStats(), diffs)
    assert decision is not None and decision.outcome == "keep" and decision.p_value == 1.0


# -- error rate under looking often ----------------------------------------------------


def naive_promotes(stats: list[tuple[GainStats, ...]], paired: bool,
                   alpha: float) -> bool:
    """Whether the full ``alpha`` at every planned look would have promoted once."""
    for live, candidate, diffs in stats:
        if paired:
            se = math.sqrt(diffs.variance / diffs.n)
            difference = diffs.mean
        else:
            se = math.sqrt(live.variance / live.n + candidate.variance / candidate.n)
            difference = candidate.mean - live.mean
        if se > 0 and 0.5 * math.erfc(difference / se / math.sqrt(2)) <= alpha:
            return True
    return False


@pytest.mark.parametrize("paired", [True, False])
def test_policy_equal_candidate_false_promotions_within_rate(paired: bool) -> None:
    config = PromotionConfig(mode="auto")
    ours = naive = 0
    for seed in SIM_SEEDS:
        policy = PromotionPolicy(config, paired=paired)
        rng = random.Random(seed)
        live, candidate, diffs = GainStats(), GainStats(), GainStats()
        at_looks = []
        promoted = False
        while live.n < config.max_samples:
            for _ in range(POLL_EVERY):
                g_live = 1.0 if rng.random() < 0.8 else 0.0
                g_cand = 1.0 if rng.random() < 0.8 else 0.0
                live.add(g_live)
                candidate.add(g_cand)
                diffs.add(g_cand - g_live)
            if live.n in policy.looks:
                at_looks.append(tuple(GainStats.from_list(s.as_list())
                                      for s in (live, candidate, diffs)))
            decision = policy.check(live, candidate, diffs if paired else None)
            promoted = promoted or (decision is not None and decision.outcome == "promote")
        assert policy.finished
        ours += promoted
        naive += naive_promotes(at_looks, paired, config.false_promotion_rate)
    print(f"paired={paired}: false promotions {ours}/50, naive {naive}/50")
    assert ours / len(SIM_SEEDS) <= config.false_promotion_rate
    assert naive / len(SIM_SEEDS) > config.false_promotion_rate
    assert naive > ours
