"""The card's evaluation facts (eval.yaml): prompts verbatim, scores per mode."""
import pytest

from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import load_eval_facts


def test_math_prompt_is_the_cards_template_with_the_question():
    text = load_eval_facts().user_prompt("math", "What is 2 plus 3?")
    assert text.startswith("Below is a math question.")
    assert "Your final answer should be in \\boxed{}.\nQuestion: What is 2 plus 3?" in text


def test_mcq_prompt_lists_four_lettered_choices_and_asks_for_a_boxed_letter():
    text = load_eval_facts().user_prompt("mcq", "Which?", ["x", "y {z}", "w", "v"])
    assert "\nChoices:\nA. x\nB. y {z}\nC. w\nD. v\n" in text
    assert text.endswith("into a \\boxed{}")


def test_mcq_without_four_choices_is_refused_with_the_fix():
    with pytest.raises(NemoTrtError, match="4 choices"):
        load_eval_facts().user_prompt("mcq", "Which?", ["x", "y"])


def test_card_scores_per_mode():
    scores = load_eval_facts().card_scores
    assert scores["math500"].for_mode("on") == 96.6 and scores["math500"].for_mode("off") == 74.0
    assert scores["gpqa_diamond"].task == "mcq"


def test_a_question_that_quotes_a_placeholder_stays_as_written():
    text = load_eval_facts().user_prompt("mcq", "Is {option_A} a placeholder?", ["{question}", "b", "c", "d"])
    assert "Is {option_A} a placeholder?" in text and text.count("{option_A}") == 1
    assert "\nA. {question}\n" in text
