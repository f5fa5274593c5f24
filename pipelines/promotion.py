"""The automatic promotion decision: does the candidate beat the live model?

Each labeled record gives each arm a *gain* (1.0 or 0.0 for a right or wrong class,
minus the absolute error for a regressor). Scorers keep :class:`GainStats` (count, sum,
sum of squares) per arm, and in shadow mode of the per-record difference
``gain_candidate - gain_live`` too; the supervisor sums them over the scorers and asks a
:class:`PromotionPolicy` after every poll. The policy tests only at planned looks
(``min_samples``, then every ``check_every``, the last at ``max_samples``), each one
at ``false_promotion_rate / n_looks``: by the union bound the chance of promoting a
candidate that is not better by more than ``margin`` stays within the configured rate
however often it is asked and whichever looks the polls happen to land on. The
z-tests are large-sample ones; ``min_samples`` (at least 10, default 1000) keeps them
in their range.

>>> config = PromotionConfig(mode="auto", min_samples=1000, check_every=1000,
...                          max_samples=5000)
>>> policy = PromotionPolicy(config, paired=False)
>>> live, candidate = GainStats(), GainStats()
>>> live.add_many([1.0] * 750 + [0.0] * 250)          # 75% accuracy
>>> candidate.add_many([1.0] * 850 + [0.0] * 150)     # 85% accuracy
>>> decision = policy.check(live, candidate)
>>> decision.outcome, decision.test, decision.look, decision.n_looks
('promote', 'welch-z', 1, 5)
>>> round(decision.difference, 3), round(decision.z, 2), decision.alpha_per_look
(0.1, 5.63, 0.01)
>>> policy.finished, policy.check(live, candidate) is None
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

from pipelines.config import PromotionConfig
from pipelines.protocol import Deployment

__all__ = ["ArmGains", "Decision", "GainStats", "PromotionPolicy", "merge_gains"]

# Variance from sums of squares cancels: below this share of the mean square it is
# rounding noise, and the gains were constant.
_RELATIVE_NOISE = 1e-10


@dataclass(slots=True)
class GainStats:
    """Sufficient statistics of one arm's gains: count, sum and sum of squares.

    Mergeable (scorers each keep one; the supervisor sums them) and shipped between
    actors as a plain ``[n, total, total_sq]`` list.

    >>> stats = GainStats()
    >>> stats.add_many([1.0, 0.0, 1.0, 1.0])
    >>> stats.n, stats.mean, round(stats.variance, 4)
    (4, 0.75, 0.25)
    >>> other = GainStats.from_list([2, 1.0, 1.0])
    >>> GainStats.sum([stats, other]).as_list()
    [6, 4.0, 4.0]
    """

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, g: float) -> None:
        """Count one gain; a non-finite gain is refused (it would poison every sum)."""
        if not math.isfinite(g):
            raise ValueError(f"a gain must be a finite number, got {g!r}")
        self.n += 1
        self.total += g
        self.total_sq += g * g

    def add_many(self, gains: Iterable[float]) -> None:
        """Count each gain of ``gains``, in order."""
        for g in gains:
            self.add(g)

    def merge(self, other: GainStats) -> GainStats:
        """Add ``other``'s counts to these (in place); returns ``self``."""
        self.n += other.n
        self.total += other.total
        self.total_sq += other.total_sq
        return self

    @classmethod
    def sum(cls, stats: Iterable[GainStats]) -> GainStats:
        """A new accumulator holding all of ``stats`` (e.g. one per scorer)."""
        out = cls()
        for s in stats:
            out.merge(s)
        return out

    @property
    def mean(self) -> float:
        """The mean gain (0.0 before any gain)."""
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """The sample variance (``n - 1`` denominator); 0.0 below two gains."""
        if self.n < 2:
            return 0.0
        centred = self.total_sq - self.total * self.total / self.n
        if centred <= _RELATIVE_NOISE * self.total_sq:
            return 0.0
        return centred / (self.n - 1)

    def as_list(self) -> list[float]:
        """``[n, total, total_sq]``: the form that travels between actors."""
        return [self.n, self.total, self.total_sq]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> GainStats:
        """The inverse of :meth:`as_list`."""
        if len(values) != 3:
            raise ValueError(f"expected [n, total, total_sq], got {len(values)} values")
        n, total, total_sq = values
        if n < 0 or n != int(n):
            raise ValueError(f"n must be a whole number >= 0, got {n!r}")
        return cls(int(n), float(total), float(total_sq))


@dataclass(frozen=True, slots=True)
class Decision:
    """The result of one look, with the numbers that led to it.

    ``difference`` is candidate minus live: the mean per-record difference in a paired
    test, the difference of the arms' means in a two-sample one. ``n_samples`` is the
    sample size the look was taken at (paired: records scored by both; two-sample: the
    smaller arm). ``outcome == "keep"`` is final only at the last look (:attr:`final`);
    earlier it only means "not yet".
    """

    outcome: Literal["promote", "keep"]
    test: Literal["paired-z", "welch-z"]
    look: int
    n_looks: int
    n_samples: int
    n_live: int
    n_candidate: int
    live_mean: float
    candidate_mean: float
    difference: float
    margin: float
    z: float
    p_value: float
    alpha_per_look: float
    false_promotion_rate: float

    @property
    def final(self) -> bool:
        """Whether this decision ends the evaluation (a promotion, or the last look)."""
        return self.outcome == "promote" or self.look >= self.n_looks

    def details(self) -> dict[str, str | int | float | None]:
        """Every field as a plain JSON value, for the registry (an infinite ``z``, from a
        zero standard error, becomes ``None``).

        >>> d = Decision("keep", "paired-z", 2, 3, 2000, 2000, 2000, 0.8, 0.8, 0.0, 0.0,
        ...              -math.inf, 1.0, 0.01, 0.03)
        >>> d.details()["z"] is None, d.details()["look"], d.final
        (True, 2, False)
        """
        out: dict[str, str | int | float | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out


class PromotionPolicy:
    """Decides, at planned looks, whether the candidate beats live by more than the margin.

    One-sided test of H0: ``mean_candidate - mean_live <= margin`` at
    ``alpha_per_look = false_promotion_rate / n_looks``. ``paired=True`` (shadow mode:
    both arms score the same records) tests the mean of the per-record differences
    passed as ``paired``; ``paired=False`` (canary, A/B: different keys) is Welch's
    two-sample z-test. The policy only decides; acting on it (and only in ``mode: auto``)
    is the caller's business.

    :meth:`check` answers ``None`` between looks. When a poll finds that one or several
    looks were reached, that is one look, numbered as the latest of them. A promotion, or
    the last look without one, ends the evaluation: the :class:`Decision` is returned
    and later checks answer ``None`` until :meth:`reset`. Every look's decision, the
    intermediate ones too, is kept in :attr:`last`.

    >>> config = PromotionConfig(min_samples=100, check_every=100, max_samples=250)
    >>> policy = PromotionPolicy(config, paired=True)
    >>> policy.looks, policy.n_looks
    ((100, 200, 250), 3)
    >>> same = GainStats()
    >>> same.add_many([1.0] * 80 + [0.0] * 20)
    >>> no_change = GainStats(100, 0.0, 0.0)      # every record: the same gain for both
    >>> policy.check(same, same, no_change) is None, policy.last.look, policy.last.outcome
    (True, 1, 'keep')
    >>> no_change.n = 300                         # past the last look
    >>> final = policy.check(same, same, no_change)
    >>> final.outcome, final.look, final.p_value, policy.finished
    ('keep', 3, 1.0, True)
    """

    def __init__(self, config: PromotionConfig, *, paired: bool) -> None:
        self.config = config
        self.paired = paired
        grid = range(config.min_samples, config.max_samples, config.check_every)
        self.looks: tuple[int, ...] = (*grid, config.max_samples)
        """The sample sizes of the planned looks, in order."""
        self.n_looks = len(self.looks)
        self.alpha_per_look = config.false_promotion_rate / self.n_looks
        self.last: Decision | None = None
        """The decision of the latest look (``None`` before the first one)."""
        self._next = 0  # index in ``looks`` of the next look to take

    @property
    def finished(self) -> bool:
        """Whether the evaluation has ended (promoted, or kept at the last look)."""
        return self._next >= self.n_looks

    def reset(self) -> None:
        """Start over, e.g. for a new candidate (the counts must start over too)."""
        self.last = None
        self._next = 0

    def check(self, live: GainStats, candidate: GainStats,
              paired: GainStats | None = None) -> Decision | None:
        """The decision if a planned look was reached since the last one, else ``None``.

        ``paired`` (required when the policy is paired, refused otherwise) holds
        ``gain_candidate - gain_live`` for each record both arms scored.
        """
        if self.paired and paired is None:
            raise ValueError("a paired policy needs the paired differences (paired=None)")
        if not self.paired and paired is not None:
            raise ValueError("a two-sample policy takes no paired differences")
        if self.finished:
            return None
        n = paired.n if paired is not None else min(live.n, candidate.n)
        reached = self._next
        while reached < self.n_looks and self.looks[reached] <= n:
            reached += 1
        if reached == self._next:
            return None
        decision = self._test(live, candidate, paired, look=reached, n_samples=n)
        self.last = decision
        self._next = self.n_looks if decision.final else reached
        return decision if decision.final else None

    def _test(self, live: GainStats, candidate: GainStats, paired: GainStats | None, *,
              look: int, n_samples: int) -> Decision:
        margin = self.config.margin
        if paired is not None:
            difference = paired.mean
            se = math.sqrt(paired.variance / paired.n)
        else:
            difference = candidate.mean - live.mean
            se = math.sqrt(live.variance / live.n + candidate.variance / candidate.n)
        if se > 0:
            z = (difference - margin) / se
        else:  # no spread at all: the difference is exact
            z = math.inf if difference > margin else -math.inf
        p_value = 0.5 * math.erfc(z / math.sqrt(2))
        promote = p_value <= self.alpha_per_look
        return Decision(
            outcome="promote" if promote else "keep",
            test="paired-z" if paired is not None else "welch-z",
            look=look,
            n_looks=self.n_looks,
            n_samples=n_samples,
            n_live=live.n,
            n_candidate=candidate.n,
            live_mean=live.mean,
            candidate_mean=candidate.mean,
            difference=difference,
            margin=margin,
            z=z,
            p_value=p_value,
            alpha_per_look=self.alpha_per_look,
            false_promotion_rate=self.config.false_promotion_rate,
        )


class ArmGains(NamedTuple):
    """Live's and the candidate's gains over every scorer (and their paired differences,
    in shadow mode): what :meth:`PromotionPolicy.check` compares."""

    live: GainStats
    candidate: GainStats
    paired: GainStats | None


def merge_gains(scorers: list[dict[str, Any]], deployment: Deployment, *, paired: bool
                ) -> ArmGains | None:
    """Sum each scorer's gains of the live arm and of the candidate (``arms[1]``); None
    while a scorer has not applied the deployment yet (its figures are of another).

    >>> from pipelines.protocol import ArmSpec, Deployment
    >>> d = Deployment("shadow", (ArmSpec("live", "v0", "live", 1.0),
    ...                           ArmSpec("candidate", "v1", "shadow", 0.0)))
    >>> def scorer(live, cand, diff):
    ...     return {"arms": [{"version": "v0", "gain": live},
    ...                      {"version": "v1", "gain": cand, "paired": diff}]}
    >>> g = merge_gains([scorer([2, 1.0, 1.0], [2, 2.0, 2.0], [2, 1.0, 1.0]),
    ...                  scorer([1, 1.0, 1.0], [1, 0.0, 0.0], [1, -1.0, 1.0])], d, paired=True)
    >>> g.live.as_list(), g.candidate.as_list(), g.paired.as_list()
    ([3, 2.0, 2.0], [3, 2.0, 2.0], [3, 0.0, 2.0])
    >>> merge_gains([{"arms": [{"version": "v0", "gain": [1, 1.0, 1.0]}]}], d, paired=True)
    """
    live_version, candidate = deployment.arms[0].version, deployment.arms[1].version
    live, cand = GainStats(), GainStats()
    diff = GainStats() if paired else None
    for st in scorers:
        arms = {a["version"]: a for a in st["arms"]}
        if live_version not in arms or candidate not in arms:
            return None
        live.merge(GainStats.from_list(arms[live_version]["gain"]))
        cand.merge(GainStats.from_list(arms[candidate]["gain"]))
        if diff is not None:
            diff.merge(GainStats.from_list(arms[candidate]["paired"]))
    return ArmGains(live, cand, diff)
