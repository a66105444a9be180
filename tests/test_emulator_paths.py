"""The emulator's embeddings, Azure OpenAI and Vertex AI paths, with the real SDKs over HTTP."""

from __future__ import annotations

import base64
import json
import math
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2.credentials import Credentials

from pytest_llm_budget.emulator import Emulator, EmulatorConfig, LimitSpec
from pytest_llm_budget.emulator.__main__ import build_config

BASE = EmulatorConfig(
    window=10.0,
    openai=LimitSpec(tpm=500_000, rpm=10_000),
    gemini=LimitSpec(tpm=500_000, rpm=10_000),
    azure_deployments=(("prod-4o", "gpt-4o"),),
)
MSG = [{"role": "user", "content": "Say something deterministic, please."}]
API_VERSION = "2024-10-21"


@pytest.fixture(scope="module")
def server() -> Iterator[Emulator]:
    with Emulator(BASE) as emu:
        yield emu


@pytest.fixture
def emu(server: Emulator) -> Iterator[Emulator]:
    server.configure(BASE)
    server.reset()
    yield server
    server.configure(BASE)
    server.reset()


@pytest.fixture
def oai(emu: Emulator) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    yield client
    client.close()


def azure(emu: Emulator, key: str = "azure-key", **kwargs: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emu.azure_endpoint,
        api_key=key,
        api_version=API_VERSION,
        max_retries=0,
        **kwargs,
    )


def vertex(emu: Emulator, token: str = "ya29.emulator") -> genai.Client:
    """google-genai with vertexai=True, a project and an OAuth token: no Google credentials."""
    return genai.Client(
        vertexai=True,
        project="my-project",
        location="us-central1",
        credentials=Credentials(token=token),
        http_options=types.HttpOptions(base_url=emu.vertex_base_url),
    )


def bucket(emu: Emulator, name: str) -> dict[str, Any]:
    found: dict[str, Any] = emu.stats()["buckets"][name]
    return found


def post(emu: Emulator, path: str, body: Any, **headers: str) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(f"{emu.url}{path}", data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- embeddings ---------------------------------------------------------------------------------


def test_embeddings_usage_vectors_and_tpm_charge(emu: Emulator, oai: openai.OpenAI) -> None:
    texts = ["the quick brown fox", "jumps over the lazy dog!"]
    raw = oai.embeddings.with_raw_response.create(model="text-embedding-3-small", input=texts)
    done = raw.parse()  # the SDK asks for base64 and decodes it
    tokens = math.ceil(sum(len(t) for t in texts) / 4)
    assert done.usage.prompt_tokens == done.usage.total_tokens == tokens
    assert [d.index for d in done.data] == [0, 1] and done.model == "text-embedding-3-small"
    assert all(len(d.embedding) == 16 for d in done.data)
    assert all(abs(math.fsum(v * v for v in d.embedding) - 1) < 1e-4 for d in done.data)
    assert done.data[0].embedding != done.data[1].embedding
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 500_000 - tokens
    floats = oai.embeddings.create(
        model="text-embedding-3-small", input=texts[0], encoding_format="float", dimensions=4
    )
    again = oai.embeddings.create(
        model="text-embedding-3-small", input=texts[0], encoding_format="float", dimensions=4
    )
    assert len(floats.data[0].embedding) == 4 and floats.data == again.data
    stats = bucket(emu, "openai:text-embedding-3-small")
    assert stats["admitted"] == 3 and stats["prompt_tokens"] == tokens + 2 * 5


def test_embeddings_base64_wire_and_token_ids(emu: Emulator) -> None:
    body = {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]}
    status, out = post(
        emu, "/v1/embeddings", {**body, "encoding_format": "base64"}, authorization="Bearer k"
    )
    assert status == 200 and out["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    vector = struct.unpack("<16f", base64.b64decode(out["data"][0]["embedding"]))
    _, plain = post(emu, "/v1/embeddings", body, authorization="Bearer k")
    assert plain["data"][0]["embedding"] == pytest.approx(list(vector), abs=1e-6)


@pytest.mark.parametrize("bad", ["", [], [""], [1.5], {"text": "x"}, None])
def test_embeddings_bad_input_is_400(emu: Emulator, bad: object) -> None:
    status, out = post(
        emu, "/v1/embeddings", {"model": "m", "input": bad}, authorization="Bearer k"
    )
    assert status == 400 and "'$.input' is invalid" in out["error"]["message"]


def test_embeddings_over_tpm_is_429(emu: Emulator, oai: openai.OpenAI) -> None:
    emu.configure(openai=LimitSpec(tpm=100, rpm=None))
    oai.embeddings.create(model="text-embedding-3-small", input="x" * 320)  # 80 tokens
    with pytest.raises(openai.RateLimitError) as err:
        oai.embeddings.create(model="text-embedding-3-small", input="x" * 320)
    assert "Limit 100, Used 80, Requested 80" in str(err.value)


# --- Azure OpenAI --------------------------------------------------------------------------------


def test_azure_chat_by_deployment_shares_the_models_bucket(
    emu: Emulator, oai: openai.OpenAI
) -> None:
    client = azure(emu)
    raw = client.chat.completions.with_raw_response.create(
        model="prod-4o", messages=MSG, max_tokens=50
    )
    done = raw.parse()
    plain = oai.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=50)
    assert done.model == "gpt-4o" and done.usage == plain.usage
    assert done.choices[0].message.content == plain.choices[0].message.content
    charge = math.ceil(len(MSG[0]["content"]) / 4) + 50
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 500_000 - charge
    stats = bucket(emu, "openai:gpt-4o")
    assert stats["admitted"] == 2 and stats["tokens_charged"] == 2 * charge
    assert {r.path for r in emu.log} == {
        "/openai/deployments/prod-4o/chat/completions",
        "/v1/chat/completions",
    }


def test_azure_unmapped_deployment_is_its_own_model_and_streams(emu: Emulator) -> None:
    client = azure(emu)
    chunks = list(
        client.chat.completions.create(
            model="my-deployment",
            messages=MSG,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].model == "my-deployment"
    assert bucket(emu, "openai:my-deployment")["admitted"] == 1


def test_azure_deployment_option_overrides_the_body_model(emu: Emulator) -> None:
    client = azure(emu, azure_deployment="prod-4o")
    done = client.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=10)
    assert done.model == "gpt-4o" and "openai:gpt-5" not in emu.stats()["buckets"]


def test_azure_embeddings_and_responses(emu: Emulator) -> None:
    client = azure(emu)
    emb = client.embeddings.create(model="prod-4o", input="hello azure")
    assert emb.usage.prompt_tokens == math.ceil(len("hello azure") / 4)
    resp = client.responses.create(model="gpt-4o", input="hi", max_output_tokens=16)
    assert resp.usage is not None and resp.usage.input_tokens > 0
    assert [r.path for r in emu.log] == [
        "/openai/deployments/prod-4o/embeddings",
        "/openai/responses",
    ]
    assert bucket(emu, "openai:gpt-4o")["admitted"] == 2


def test_azure_api_key_header_is_checked(emu: Emulator) -> None:
    assert azure(emu).chat.completions.create(model="prod-4o", messages=MSG, max_tokens=5)
    emu.configure(valid_keys=["right"])
    with pytest.raises(openai.AuthenticationError, match="invalid subscription key"):
        azure(emu, key="wrong").chat.completions.create(model="prod-4o", messages=MSG)
    assert azure(emu, key="right").chat.completions.create(model="prod-4o", messages=MSG)
    status, _ = post(
        emu, "/v1/chat/completions", {"model": "gpt-4o", "messages": MSG}, **{"api-key": "right"}
    )
    assert status == 401  # api.openai.com takes no api-key header


def test_azure_429_has_openai_hints(emu: Emulator) -> None:
    emu.configure(openai=LimitSpec(tpm=100, rpm=None))
    client = azure(emu)
    client.chat.completions.create(model="prod-4o", messages=MSG, max_tokens=60)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="prod-4o", messages=MSG, max_tokens=60)
    assert err.value.response.headers["retry-after-ms"]
    assert "for gpt-4o in organization" in str(err.value)


# --- Vertex AI -----------------------------------------------------------------------------------


def test_vertex_generate_stream_and_count_share_geminis_bucket(emu: Emulator) -> None:
    client = vertex(emu)
    done = client.models.generate_content(model="gemini-2.5-flash", contents="Hello, Vertex!")
    api = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emu.gemini_base_url))
    plain = api.models.generate_content(model="gemini-2.5-flash", contents="Hello, Vertex!")
    assert done.text == plain.text and done.usage_metadata == plain.usage_metadata
    assert done.usage_metadata is not None
    streamed = list(
        client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hello, Vertex!")
    )
    assert "".join(c.text or "" for c in streamed) == done.text
    count = client.models.count_tokens(model="gemini-2.5-flash", contents="Hello, Vertex!")
    assert count.total_tokens == done.usage_metadata.prompt_token_count
    stats = bucket(emu, "gemini:gemini-2.5-flash")
    assert stats["admitted"] == 3 and stats["tokens_charged"] == 3 * count.total_tokens
    assert bucket(emu, "gemini:count_tokens")["requests"] == 1
    prefix = "/v1beta1/projects/my-project/locations/us-central1/publishers/google/models/"
    assert [r.path for r in emu.log if r.path.startswith("/v1beta1")] == [
        prefix + "gemini-2.5-flash:generateContent",
        prefix + "gemini-2.5-flash:streamGenerateContent",
        prefix + "gemini-2.5-flash:countTokens",
    ]


def test_vertex_express_mode_with_an_api_key(emu: Emulator) -> None:
    client = genai.Client(
        vertexai=True, api_key="k", http_options=types.HttpOptions(base_url=emu.vertex_base_url)
    )
    done = client.models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert done.text and emu.log[-1].path == (
        "/v1beta1/publishers/google/models/gemini-2.5-pro:generateContent"
    )


def test_gemini_api_count_tokens_is_free(emu: Emulator) -> None:
    emu.configure(gemini=LimitSpec(tpm=5, rpm=None))
    client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=emu.gemini_base_url))
    count = client.models.count_tokens(model="gemini-2.5-flash", contents="x" * 400)
    assert count.total_tokens == 100 and "gemini:gemini-2.5-flash" not in emu.stats()["buckets"]


def test_vertex_bearer_token_is_checked_and_429(emu: Emulator) -> None:
    path = "/v1beta1/projects/p/locations/l/publishers/google/models/m:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    status, out = post(emu, path, body)
    assert status == 401 and out["error"]["status"] == "UNAUTHENTICATED"
    emu.configure(valid_keys=["ya29.good"])
    bad = vertex(emu, token="ya29.bad")
    with pytest.raises(genai_errors.ClientError):
        bad.models.generate_content(model="m", contents="x")
    emu.configure(gemini=LimitSpec(tpm=10, rpm=None))
    client = vertex(emu, token="ya29.good")
    client.models.generate_content(model="gemini-2.5-flash", contents="x" * 32)
    with pytest.raises(genai_errors.ClientError) as err:
        client.models.generate_content(model="gemini-2.5-flash", contents="x" * 32)
    assert err.value.code == 429 and err.value.status == "RESOURCE_EXHAUSTED"


# --- stats and CLI -------------------------------------------------------------------------------


def test_stats_and_config_report_the_bound_port(emu: Emulator) -> None:
    assert emu.config.port == 0
    assert emu.stats()["config"]["port"] == emu.port
    with urllib.request.urlopen(f"{emu.url}/__emulator/config", timeout=5) as resp:
        assert json.loads(resp.read())["port"] == emu.port
    assert emu.stats()["config"]["azure_deployments"] == {"prod-4o": "gpt-4o"}


def test_cli_and_control_azure_deployments(emu: Emulator) -> None:
    config = build_config(["--azure-deployment", "a=gpt-4o", "--azure-deployment", "b=gpt-5"])
    assert config.azure_model("a") == "gpt-4o" and config.azure_model("zzz") == "zzz"
    with pytest.raises(SystemExit):
        build_config(["--azure-deployment", "nomodel"])
    emu.configure(azure_deployments={"c": "gpt-5"})
    done = azure(emu).chat.completions.create(model="c", messages=MSG, max_tokens=5)
    assert done.model == "gpt-5"
