"""Azure OpenAI and Vertex AI clients the code under test builds, metered against the emulator."""

from __future__ import annotations

import json
from typing import Any

import pytest

INNER = """
import json, openai, pytest
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

MSG = [{"role": "user", "content": "Say something deterministic, please."}]


def azure(emu):
    return openai.AzureOpenAI(
        azure_endpoint=emu.azure_endpoint, api_key="azure-key", api_version="2024-10-21")


def vertex(emu):
    return genai.Client(
        vertexai=True, project="my-project", location="us-central1",
        credentials=Credentials(token="ya29.emulator"),
        http_options=types.HttpOptions(base_url=emu.vertex_base_url))


def test_azure(llm_emulator, llm_usage):
    client = azure(llm_emulator)
    for _ in range(3):
        client.chat.completions.create(model="prod-4o", messages=MSG, max_tokens=1500)
    client.embeddings.create(model="prod-4o", input="embed this text, please")
    client.responses.create(model="prod-4o", input="hi", max_output_tokens=20)
    assert llm_usage.calls == 5


def test_vertex(llm_emulator, llm_usage):
    client = vertex(llm_emulator)
    for _ in range(3):
        client.models.generate_content(model="gemini-2.5-flash", contents="x" * 4000)
    chunks = client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi there")
    assert "".join(c.text or "" for c in chunks)
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="hi").total_tokens
    assert llm_usage.calls == 5


def test_vertex_express_base_url_from_env(llm_emulator, llm_usage):
    client = genai.Client(vertexai=True, api_key="k")  # GOOGLE_VERTEX_BASE_URL: the emulator
    client.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert llm_usage.calls == 1


def test_vertex_gemini_client_fixture(llm_emulator, gemini_client, llm_usage):
    gemini_client.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert llm_usage.calls == 1


def test_zz_dump(llm_emulator):
    log = [(r.path, r.prompt_tokens, r.completion_tokens, r.outcome) for r in llm_emulator.log]
    with open("emulator.json", "w") as fh:
        json.dump({"log": log, "stats": llm_emulator.stats()}, fh)
"""


def test_azure_and_vertex_clients_are_metered_with_the_emulators_usage(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The seed's set-up: Gemini on Vertex through the environment (express mode: an API key).
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llm-report", "out.json", "--llm-tpm", "4000",
        "--llm-window", "3", "-p", "no:randomly",
    )  # fmt: skip
    result.assert_outcomes(passed=5)
    report = json.loads((pytester.path / "out.json").read_text())
    emulator = json.loads((pytester.path / "emulator.json").read_text())
    calls: list[dict[str, Any]] = report["calls"]
    log = emulator["log"]
    assert [c["status"] for c in calls] == ["ok"] * 12 and len(log) == 12
    assert all(outcome == "ok" for *_, outcome in log)
    assert emulator["stats"]["totals"]["rejected"] == 0
    assert report["totals"]["rate_limit_events"] == 0 and report["totals"]["retries"] == 0
    metered = [(c["vendor"], c["prompt_tokens"], c["completion_tokens"]) for c in calls]
    served = [
        ("gemini" if "/models/" in path else "openai", prompt, completion)
        for path, prompt, completion, _ in log
    ]
    assert metered == served  # the emulator's usage, call by call
    azure_paths = [p for p, *_ in log[:5]]
    assert azure_paths == [
        *["/openai/deployments/prod-4o/chat/completions"] * 3,
        "/openai/deployments/prod-4o/embeddings",
        "/openai/responses",
    ]
    assert {c["model"] for c in calls[:5]} == {"prod-4o"}
    assert calls[3]["completion_tokens"] == 0 and calls[3]["prompt_tokens"] == 6  # embeddings
    vertex = "/v1beta1/projects/my-project/locations/us-central1/publishers/google/models/"
    assert [p for p, *_ in log[5:10]] == [
        *[vertex + "gemini-2.5-flash:generateContent"] * 3,
        vertex + "gemini-2.5-flash:streamGenerateContent",
        vertex + "gemini-2.5-flash:countTokens",
    ]
    express = "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert [p for p, *_ in log[10:]] == [express, express]
    assert {c["vendor"] for c in calls[5:]} == {"gemini"}
    # Three 1509-token chat calls against a 3400-token budget: the third waited for room.
    assert report["totals"]["waited_s"] > 0


MATRIX = """
def test_answer(llm_emulator, llm_model, llm_scenario, gemini_client, llm_usage):
    answer = gemini_client.models.generate_content(model=llm_model.name, contents="hello")
    assert answer.text and llm_usage.calls == 1
    assert llm_emulator.log[-1].path.startswith("/v1beta1/publishers/google/models/")
"""


def test_the_matrix_runs_gemini_on_vertex_against_the_emulator(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    pytester.makepyfile(test_inner=MATRIX)
    pytester.makefile(
        ".toml",
        sc='[[scenarios]]\nvantage = "NONE"\ngrounding = "off"\n'
        '[[scenarios]]\nvantage = "ALS_ONLY"\ngrounding = "required"\n',
    )
    pytester.makeini("[pytest]\nllm_scenarios = sc.toml\nllm_models = gemini:gemini-2.5-pro\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llm-report", "out.json", "--llm-tpm", "4000"
    )
    result.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "out.json").read_text())
    assert [(c["vendor"], c["model"], c["status"]) for c in report["calls"]] == [
        ("gemini", "gemini-2.5-pro", "ok")
    ] * 2
    assert report["totals"]["rate_limit_events"] == 0


def test_vertex_and_azure_requests_are_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llm_budget.routing import traffic

    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", "http://vertex.test:9000/")
    path = "/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-pro:generateContent"
    found = traffic.classify("vertex.test", 9000, path)
    assert found.llm_host and found.provider is not None and found.provider.vendor == "gemini"
    assert not traffic.classify("vertex.test", 9001, path).llm_host
    for azure_path in (
        "/openai/deployments/prod/chat/completions?api-version=2024-10-21",
        "/openai/deployments/prod/embeddings?api-version=2024-10-21",
        "/openai/responses?api-version=2024-10-21",
    ):
        hit = traffic.classify("acme.openai.azure.com", None, azure_path)
        assert hit.llm_host and hit.provider is not None and hit.provider.vendor == "openai"
