"""`nemo-trt eval` statistics against known values (accuracy-eval.md §4 worked numbers)."""
from __future__ import annotations

import math

import pytest

from nemo_trt.serve.eval import stats


def test_wilson_known_values():
    lo, hi = stats.wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    # The reference's worked table at the card's figures (K=1).
    lo, hi = stats.wilson_interval(0.966 * 500, 500)
    assert (round(lo * 100, 1), round(hi * 100, 1)) == (94.6, 97.9)
    lo, hi = stats.wilson_interval(0.584 * 30, 30)
    assert (round(lo * 100, 1), round(hi * 100, 1)) == (40.8, 74.1)
    assert stats.wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert stats.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_pass_at_1_is_the_mean_of_per_question_rates():
    assert stats.pass_at_1([4, 2, 0], [4, 4, 4]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        stats.pass_at_1([], [])


def test_bootstrap_is_seeded_and_sensible():
    scores = [1.0] * 70 + [0.0] * 30
    a = stats.bootstrap_interval(scores, seed=3)
    assert a == stats.bootstrap_interval(scores, seed=3)
    wald = 1.96 * math.sqrt(0.7 * 0.3 / 100)
    assert a[0] == pytest.approx(0.7 - wald, abs=0.03) and a[1] == pytest.approx(0.7 + wald, abs=0.03)
    assert stats.bootstrap_interval([0.5] * 5) == (0.5, 0.5)


def test_mcnemar_exact():
    assert stats.mcnemar_exact_drop(5, 0) == pytest.approx(1 / 32)
    assert stats.mcnemar_exact_drop(3, 1) == pytest.approx(5 / 16)
    assert stats.mcnemar_exact_drop(0, 0) == 1.0
    assert stats.mcnemar_exact_drop(0, 4) == 1.0


def test_paired_decision_flags_a_real_drop_and_not_a_rerun():
    ref = [(1, 1)] * 8 + [(0, 1)] * 2
    same = stats.paired_test(ref, ref)
    assert not same.significant_drop and same.p_value == 1.0 and same.test.startswith("McNemar")
    dropped = stats.paired_test([(0, 1)] * 6 + [(1, 1)] * 2 + [(0, 1)] * 2, ref)
    assert dropped.significant_drop and dropped.p_value == pytest.approx(1 / 64)
    few = stats.paired_test([(0, 1)] * 2 + [(1, 1)] * 6 + [(0, 1)] * 2, ref)  # 2 discordant: p = 1/4
    assert not few.significant_drop
    # An improvement is never a drop.
    assert not stats.paired_test(ref, [(0, 1)] * 10).significant_drop


def test_paired_decision_with_k_samples():
    ref = [(4, 4)] * 6 + [(2, 4)] * 4
    rerun = stats.paired_test(ref, ref)
    assert rerun.p_value == pytest.approx(0.5) and not rerun.significant_drop
    worse = stats.paired_test([(1, 4)] * 6 + [(0, 4)] * 4, ref)
    assert worse.significant_drop and worse.estimate == pytest.approx(-(6 * 0.75 + 4 * 0.5) / 10)
    # A tolerance turns a small uniform drop into an acceptable one.
    small, ref40 = [(3, 4)] * 24 + [(2, 4)] * 16, ref * 4
    assert stats.paired_test(small, ref40).significant_drop
    assert not stats.paired_test(small, ref40, tolerance=0.10).significant_drop
    assert not stats.paired_test(small[:10], ref).significant_drop  # the same shift on 10 questions: noise


def test_expect_decision():
    assert not stats.expect_test([1] * 10, [1] * 10, 0.966).significant_drop
    low = stats.expect_test([1] * 3 + [0] * 7, [1] * 10, 0.9)
    # SE = max(sd(s)/sqrt(n), sqrt(p0(1-p0)/(nK))) = sqrt(0.2333/10); z = -0.6/0.15275
    assert low.p_value == pytest.approx(stats._N.cdf(-0.6 / math.sqrt((0.21 * 10 / 9) / 10)), rel=1e-6)
    assert low.significant_drop
    # 9/10 vs the card's 96.6: within noise at n=10.
    assert not stats.expect_test([1] * 9 + [0], [1] * 10, 0.966).significant_drop
    # The tolerance moves the bar: 80% vs 90±15 is fine.
    assert not stats.expect_test([1] * 8 + [0] * 2, [1] * 10, 0.9, tolerance=0.15).significant_drop


@pytest.mark.parametrize("drop, k, expected", [(0.05, 1, 495), (0.05, 4, 124), (0.05, 16, 31),
                                               (0.02, 1, 3091), (0.02, 4, 773), (0.02, 16, 193)])
def test_power_matches_the_worked_table(drop, k, expected):
    # accuracy-eval.md §4.4 (Miller, one-sided alpha .05, power .8, omega2 = 0, sigma2 = 0.1). The table
    # rounds to the nearest question; a sample size is rounded up (3091.3 -> 3092).
    assert stats.power_note(n=500, k=k, sigma2=0.1, drop=drop).questions_needed in (expected, expected + 1)


def test_power_samples_for_aime():
    note = stats.power_note(n=30, k=1, sigma2=0.1, drop=0.05)
    assert note.samples_needed == 17  # the reference's AIME25 example
    assert "K=17" in note.sentence(30, 1)
    hopeless = stats.power_note(n=30, k=1, sigma2=0.1, drop=0.05, omega2=0.02)
    assert hopeless.samples_needed is None and "no K suffices" in hopeless.sentence(30, 1)


def test_within_question_variance():
    assert stats.within_question_variance([2, 4], [4, 4]) == pytest.approx((2 * 2 / 12 + 0) / 2)
    assert stats.within_question_variance([1, 0], [1, 1]) == pytest.approx(0.25)
