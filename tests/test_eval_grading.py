"""`nemo-trt eval` answer extraction and equivalence on the tricky cases (accuracy-eval.md §3)."""
from __future__ import annotations

import pytest

from nemo_trt.serve.eval.extract import extract_exact, extract_letter, extract_math, last_boxed, normalize_text
from nemo_trt.serve.eval.grade import grade, math_equal


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{7}.", "7"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("first \\boxed{70}. Check: \\boxed{49}", "49"),  # several boxes: the last one (NS rule)
    ("\\boxed {3}", "3"),
    ("\\fbox{5} then \\boxed{6}", "6"),
    ("no box here", None),
    ("cut off \\boxed{\\frac{1}{", None),  # unbalanced: truncated mid-answer
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extract_math_falls_back_to_final_answer_line():
    assert extract_math("Work.\nThe final answer is $42$.") == "42"
    assert extract_math("The final answer is 3, then \\boxed{4}") == "4"
    assert extract_math("I do not know") is None
    assert extract_math("\\boxed{}") is None


@pytest.mark.parametrize("gold, predicted", [
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "1/2"),
    ("\\frac12", "\\dfrac{1}{2}"),
    ("16", "016"),  # AIME answers with leading zeros (math-verify says equal; NS's string shortcut does not)
    ("10", "10\\text{ cm}"),  # units in text
    ("10", "10 \\mathrm{cm}"),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt3/2"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),  # gold wrapped in $..$ parses as a tuple
    ("x \\in [1,2]", "[1,2]"),
    ("10\\%", "10"),  # math-verify accepts a percentage written with or without its sign
    ("10\\%", "0.1"),
    ("7", "7"),
])
def test_math_equivalent(gold, predicted):
    assert math_equal(gold, predicted)


@pytest.mark.parametrize("gold, predicted", [
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("16", "61"),
    ("10\\%", "20"),
    ("(3, \\frac{\\pi}{2})", "3"),
    ("70", "\\{49, 70\\}"),
])
def test_math_not_equivalent(gold, predicted):
    assert not math_equal(gold, predicted)


def test_grade_math_uses_only_the_given_answer_text():
    # The runner hands over the answer part only; a box that lived in the reasoning is not in it.
    reasoning, answer = "Let me think: \\boxed{7}", "I am not sure."
    assert grade("math", reasoning + answer, "7").correct  # would be right if the reasoning were graded...
    g = grade("math", answer, "7")  # ...but only the answer part is
    assert g.extracted is None and not g.correct
    g = grade("math", "So \\boxed{70}. Check: \\boxed{49}", "70")
    assert g.extracted == "49" and not g.correct
    g = grade("math", "It is \\boxed{\\frac{2}{4}}", "\\frac{1}{2}")
    assert g.extracted == "\\frac{2}{4}" and g.correct


@pytest.mark.parametrize("text, letter", [
    ("\\boxed{B}", "B"),
    ("\\boxed{b}", "B"),
    ("\\boxed{\\text{C}}", "C"),
    ("\\boxed{(D) 42 kelvin}", "D"),
    ("\\boxed{A} ... on reflection \\boxed{C}", "C"),
    ("The answer: **B**", "B"),
    ("Answer: (a)", "A"),
    ("I think it is A, or maybe the answer is C", "C"),
    ("Both seem plausible.", None),
    ("\\boxed{42}", None),
])
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter


def test_grade_mcq_and_exact():
    assert grade("mcq", "\\boxed{B}", "B").correct
    assert not grade("mcq", "\\boxed{C}", "B").correct
    assert grade("exact", "  Paris. ", "paris").correct
    assert grade("exact", "The answer: \\boxed{Paris}", "Paris").correct
    assert not grade("exact", "Lyon", "Paris").correct
    assert grade("exact", "", "Paris").extracted is None
    assert normalize_text("  “Ｈｅｌｌｏ”   World!! ") == "“hello” world"
    assert extract_exact("\\boxed{ Yes }") == "yes"
