"""The statistics of `nemo-trt eval`: pure functions, no I/O (accuracy-eval.md §4).

Notation: n questions, K samples per question, c_i correct on question i, s_i = c_i / K_i,
pass@1 = mean(s_i). Intervals and tests treat the questions as the unit of resampling
(Miller, "Adding Error Bars to Evals", arXiv:2411.00640); with K = 1 the Wilson score
interval and McNemar's exact test are the textbook choices for proportions and paired
proportions. Normal quantiles come from the standard library (statistics.NormalDist).
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_N = NormalDist()


def z_quantile(p: float) -> float:
    return _N.inv_cdf(p)


def pass_at_1(correct: Sequence[int], samples: Sequence[int]) -> float:
    """Mean over questions of c_i / K_i (the card's "pass@1 averaged over K runs")."""
    if not correct:
        raise ValueError("no questions")
    return sum(c / k for c, k in zip(correct, samples)) / len(correct)


def wilson_interval(successes: float, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    if trials <= 0:
        raise ValueError("trials must be positive")
    z = z_quantile(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(scores: Sequence[float], confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean, resampling questions with replacement (seeded: reproducible)."""
    n = len(scores)
    if n == 0:
        raise ValueError("no questions")
    rng = random.Random(seed)
    means = sorted(sum(scores[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = means[int(math.floor(tail * (resamples - 1)))]
    hi = means[int(math.ceil((1 - tail) * (resamples - 1)))]
    return lo, hi


def _sample_variance(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return sum((v - mean) ** 2 for v in values) / (n - 1)


def within_question_variance(correct: Sequence[int], samples: Sequence[int]) -> float:
    """Mean over questions of the unbiased per-question Bernoulli variance c(K-c)/(K(K-1)).

    With K = 1 a question's variance cannot be estimated from itself; p(1-p) of the pooled
    accuracy stands in (the most it can be on average).
    """
    if all(k >= 2 for k in samples):
        return sum(c * (k - c) / (k * (k - 1)) for c, k in zip(correct, samples)) / len(correct)
    p = sum(correct) / sum(samples)
    return p * (1 - p)


@dataclass(frozen=True)
class Decision:
    """One-sided test for a drop: H0 "no drop (beyond the tolerance)" vs H1 "dropped"."""

    test: str
    estimate: float  # observed difference, new - reference (fraction, negative = worse)
    threshold: float  # the difference that counts as a drop: -tolerance
    p_value: float
    alpha: float
    detail: str

    @property
    def significant_drop(self) -> bool:
        return self.p_value < self.alpha


def expect_test(correct: Sequence[int], samples: Sequence[int], expected: float, tolerance: float = 0.0,
                alpha: float = 0.05) -> Decision:
    """Is pass@1 significantly below `expected - tolerance` (fractions)? One-sided z test.

    The reference is a published constant (no per-question data), so only an unpaired
    comparison is possible. SE is the larger of the observed between-question SE
    (sd(s_i)/sqrt(n), Miller) and the smallest SE any question set with mean p0 - tolerance
    could have (every question at that accuracy: pure sampling noise, p(1-p)/(nK)), so a
    handful of identical greedy answers cannot make a tiny drop "significant".
    """
    n = len(correct)
    scores = [c / k for c, k in zip(correct, samples)]
    p_hat = sum(scores) / n
    bound = min(1.0, max(0.0, expected - tolerance))
    k_mean = sum(samples) / n
    se = math.sqrt(max(_sample_variance(scores) / n, bound * (1 - bound) / (n * k_mean)))
    diff = p_hat - bound
    p_value = _one_sided_p(diff, se)
    return Decision("one-sample z (vs expected)", p_hat - expected, -tolerance, p_value, alpha,
                    f"pass@1 {p_hat:.4f} vs expected {expected:.4f} - tolerance {tolerance:.4f}, SE {se:.4f}")


def _one_sided_p(diff: float, se: float) -> float:
    """P(a difference this low or lower | no drop), normal approximation; SE 0 decides by sign."""
    if se <= 0:
        return 0.0 if diff < 0 else (0.5 if diff == 0 else 1.0)
    return _N.cdf(diff / se)


def mcnemar_exact_drop(ref_only: int, new_only: int) -> float:
    """Exact one-sided McNemar p-value for a drop: P[Binomial(b+c, 1/2) >= b] (McNemar 1947).

    b = ref_only (reference right, new wrong), c = new_only.
    """
    total = ref_only + new_only
    if total == 0:
        return 1.0
    return sum(math.comb(total, i) for i in range(ref_only, total + 1)) / 2 ** total


def paired_test(new: Sequence[tuple[int, int]], ref: Sequence[tuple[int, int]], tolerance: float = 0.0,
                alpha: float = 0.05) -> Decision:
    """Has pass@1 dropped from a baseline run on the same questions? One-sided, paired over questions.

    `new` and `ref` are (correct, samples) per question, in the same question order.
    K = 1 on both sides and no tolerance: McNemar's exact test on the discordant questions.
    Otherwise: paired z on d_i = s_new,i - s_ref,i (Miller), SE = sd(d)/sqrt(n), floored by the
    within-question sampling noise of both runs so identical per-question shifts stay testable.
    """
    if len(new) != len(ref) or not new:
        raise ValueError("paired test needs the same, non-empty question set on both sides")
    n = len(new)
    d = [cn / kn - cr / kr for (cn, kn), (cr, kr) in zip(new, ref)]
    mean_d = sum(d) / n
    if tolerance == 0 and all(k == 1 for _, k in new) and all(k == 1 for _, k in ref):
        b = sum(1 for (cn, _), (cr, _) in zip(new, ref) if cr and not cn)
        c = sum(1 for (cn, _), (cr, _) in zip(new, ref) if cn and not cr)
        return Decision("McNemar exact (one-sided)", mean_d, 0.0, mcnemar_exact_drop(b, c), alpha,
                        f"{b} questions right before and wrong now, {c} the other way, of {n}")
    within = sum(_bernoulli_var(cn, kn) / kn + _bernoulli_var(cr, kr) / kr
                 for (cn, kn), (cr, kr) in zip(new, ref)) / (n * n)
    se = math.sqrt(max(_sample_variance(d) / n, within))
    p_value = _one_sided_p(mean_d + tolerance, se)
    return Decision("paired z over questions (one-sided)", mean_d, -tolerance, p_value, alpha,
                    f"mean difference {mean_d:+.4f} over {n} questions, SE {se:.4f}")


def _bernoulli_var(c: int, k: int) -> float:
    return c * (k - c) / (k * (k - 1)) if k >= 2 else 0.0


@dataclass(frozen=True)
class PowerNote:
    """How much data a one-sided test at `alpha` needs to see a drop of `drop` with `power`."""

    drop: float  # fraction
    alpha: float
    power: float
    sigma2: float  # mean per-question sampling variance assumed
    questions_needed: int  # at the current K
    samples_needed: int | None  # K at the current question count; None: more questions needed, not samples

    def sentence(self, n: int, k: int) -> str:
        head = (f"to detect a drop of {self.drop * 100:g} points (one-sided alpha {self.alpha:g}, "
                f"power {self.power:g}) between two runs: ")
        if self.samples_needed is None:
            return head + (f"{self.questions_needed} questions at K={k}; no K suffices with {n} questions")
        return head + f"K={self.samples_needed} samples per question with these {n} questions, " \
            f"or {self.questions_needed} questions at K={k}"


def power_note(n: int, k: int, sigma2: float, drop: float, alpha: float = 0.05, power: float = 0.8,
               omega2: float = 0.0) -> PowerNote:
    """Sample sizes for a paired two-run comparison (after Miller's power analysis; accuracy-eval.md §4.4).

    n = (z_a + z_b)^2 (omega2 + 2 sigma2 / K) / d^2, and solved for K at a fixed n:
    K = (z_a + z_b)^2 2 sigma2 / (n d^2 - (z_a + z_b)^2 omega2). omega2 is the spread of true
    per-question differences (0: a uniform change).
    """
    if drop <= 0:
        raise ValueError("drop must be positive")
    zz = (z_quantile(1 - alpha) + z_quantile(power)) ** 2
    sigma2 = max(sigma2, 1e-12)
    questions = math.ceil(zz * (omega2 + 2 * sigma2 / k) / drop ** 2 - 1e-9)
    room = n * drop ** 2 - zz * omega2
    samples = math.ceil(zz * 2 * sigma2 / room - 1e-9) if room > 0 else None
    return PowerNote(drop, alpha, power, sigma2, max(questions, 1), None if samples is None else max(samples, 1))
