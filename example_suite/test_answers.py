"""The example suite: 12 scenarios x 2 models = 24 cases, each answer's shape checked."""

from __future__ import annotations

from app import Answer, ask

QUESTION = "What are the three most popular cereal brands where I am?"


def test_answer_shape(llm_model, llm_scenario):
    answer = ask(
        QUESTION,
        vendor=llm_model.vendor,
        model=llm_model.name,
        vantage=llm_scenario.vantage,
        grounding=llm_scenario.grounding,
    )
    assert isinstance(answer, Answer)
    assert (answer.vendor, answer.model) == (llm_model.vendor, llm_model.name)
    assert answer.vantage == llm_scenario.vantage
    assert answer.grounded is llm_scenario.grounded
    assert answer.text.strip()
    assert answer.prompt_tokens > 0
    assert 0 < answer.completion_tokens <= 6000
