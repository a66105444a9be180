"""Cassettes: naming, record/replay of every call kind, secrets, `none` mode offline failure.

Run under both venvs: openai 3.x on httpx2, and (`.ci/run`, tox env `openai2`) 2.x on httpx.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_llm_budget.emulator import Emulator
from pytest_llm_budget.replay.cassettes import MAX_NAME, _body_matcher, cassette_name, cassette_path

SAFE = re.compile(r"^[A-Za-z0-9_.\-\[\]]+$")


def test_plain_ids_keep_their_name() -> None:
    assert cassette_name("test_x") == "test_x"
    assert cassette_name("test_x[NONE-grounded_off]") == "test_x[NONE-grounded_off]"
    assert cassette_name("TestApp::test_x") == "TestApp.test_x"
    path = cassette_path(
        Path("/s/tests/test_app.py"), "cassettes", "tests/test_app.py::T::test_a[1]"
    )
    assert path == Path("/s/tests/cassettes/test_app/T.test_a[1].yaml")
    assert cassette_path(Path("/s/t.py"), "/abs", "t.py::x") == Path("/abs/t/x.yaml")


def test_sanitised_ids_do_not_collide() -> None:
    ids = [
        "test_q[openai:gpt-5-ALS_ONLY-grounded_auto]",
        "test_q[openai/gpt-5-ALS_ONLY-grounded_auto]",
        "test_q[openai gpt-5-ALS_ONLY-grounded_auto]",
        "test_q[openai_gpt-5-ALS_ONLY-grounded_auto]",
        "test_q[../../etc/passwd]",
        "test_q[é]",
    ]
    names = [cassette_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all(SAFE.match(n) and "/" not in n for n in names)
    assert names[3] == ids[3]  # already safe: unchanged
    assert names[0].startswith("test_q[openai_gpt-5-ALS_ONLY-grounded_auto]-")


def test_long_ids_are_cut_with_a_hash() -> None:
    a, b = "test_long[" + "x" * 300 + "a]", "test_long[" + "x" * 300 + "b]"
    na, nb = cassette_name(a), cassette_name(b)
    assert na != nb
    assert len(na) <= MAX_NAME and len(nb) <= MAX_NAME
    assert na.startswith("test_long[xxx")


class _Req:
    def __init__(self, body: bytes) -> None:
        self.body = body


def test_json_bodies_match_parsed() -> None:
    _body_matcher(_Req(b'{"a": 1, "b": [1, 2]}'), _Req(b'{"b":[1,2],"a":1}'))
    with pytest.raises(AssertionError):
        _body_matcher(_Req(b'{"a": 1}'), _Req(b'{"a": 2}'))
    with pytest.raises(AssertionError):
        _body_matcher(_Req(b"plain"), _Req(b"other"))


# -- record then replay through pytest, with the real SDKs -------------------------------------
OPENAI_KEY = "sk-proj-SECRETOPENAIKEY0123456789"
GEMINI_KEY = "AIzaSySECRETGEMINIKEY0123456789"
ORG = "org-SECRETORGANISATION42"
CUSTOM = "SECRETCUSTOMHEADERVALUE"
QUERY_KEY = "SECRETQUERYKEY77"
SECRETS = (OPENAI_KEY, GEMINI_KEY, ORG, CUSTOM, QUERY_KEY)

SUITE = f'''
import asyncio, os
import httpx2, openai, pytest
from google import genai
from google.genai import types

QUESTION = os.environ.get("QUESTION", "hello")

def oai():
    return openai.OpenAI(api_key="{OPENAI_KEY}", organization="{ORG}", max_retries=0)

def gem():
    return genai.Client(api_key="{GEMINI_KEY}")

@pytest.mark.llm_budget(tokens=500)
def test_chat(llm_usage):
    r = oai().chat.completions.create(
        model="gpt-5", messages=[{{"role": "user", "content": QUESTION}}], max_completion_tokens=50)
    assert r.choices[0].message.content and r.usage.total_tokens > 0

@pytest.mark.llm_budget(tokens=500)
def test_chat_stream():
    s = oai().chat.completions.create(
        model="gpt-5", messages=[{{"role": "user", "content": "stream"}}], max_completion_tokens=50,
        stream=True, stream_options={{"include_usage": True}})
    chunks = list(s)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage.total_tokens > 0

@pytest.mark.llm_budget(tokens=500)
def test_chat_async():
    async def go():
        client = openai.AsyncOpenAI(api_key="{OPENAI_KEY}", max_retries=0)
        r = await client.chat.completions.create(
            model="gpt-5", messages=[{{"role": "user", "content": "async"}}],
            max_completion_tokens=50)
        return r.choices[0].message.content
    assert asyncio.run(go())

@pytest.mark.llm_budget(tokens=500)
def test_responses():
    r = oai().responses.create(model="gpt-5", input="responses", max_output_tokens=50)
    assert r.output_text and r.usage.total_tokens > 0

@pytest.mark.llm_budget(tokens=500)
def test_gemini_generate():
    client = gem()
    r = client.models.generate_content(model="gemini-2.5-pro", contents="gem")
    assert r.text and r.usage_metadata.total_token_count > 0

@pytest.mark.llm_budget(tokens=500)
def test_gemini_stream():
    client = gem()
    parts = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="gs"))
    assert "".join(p.text or "" for p in parts).strip()
    assert parts[-1].usage_metadata.total_token_count > 0

@pytest.mark.llm_budget(tokens=500)
def test_raw_key_query_and_custom_header():
    base = os.environ["GOOGLE_GEMINI_BASE_URL"]
    r = httpx2.post(base + "v1beta/models/gemini-2.5-pro:generateContent?key={QUERY_KEY}&alt=json",
                    json={{"contents": [{{"parts": [{{"text": "raw"}}]}}]}},
                    headers={{"x-goog-api-key": "{GEMINI_KEY}", "x-custom-secret": "{CUSTOM}"}})
    assert r.status_code == 200, r.text

def test_fixture_client(openai_client):
    r = openai_client.chat.completions.create(
        model="gpt-5", messages=[{{"role": "user", "content": "fixture"}}],
        max_completion_tokens=50)
    assert r.choices[0].message.content
'''
KINDS = 8
INI = "[pytest]\nllm_filter_headers = x-custom-secret\n"


class CountingServer:
    """A TCP listener that counts connections and answers nothing (proves no network use)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def counting() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.sock.close()


def _env(pytester: pytest.Pytester, host: str) -> None:
    env = pytester._monkeypatch
    env.setenv("OPENAI_BASE_URL", f"http://{host}/v1")
    env.setenv("OPENAI_API_KEY", OPENAI_KEY)
    env.setenv("GOOGLE_GEMINI_BASE_URL", f"http://{host}/")
    env.delenv("GOOGLE_API_KEY", raising=False)
    env.delenv("GEMINI_API_KEY", raising=False)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly", *args
    )


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> tuple[pytest.Pytester, int]:
    """The suite recorded against an emulator (then stopped); returns the emulator's call count."""
    pytester.makepyfile(test_kinds=SUITE)
    pytester.makeini(INI)
    with Emulator() as emulator:
        _env(pytester, f"127.0.0.1:{emulator.port}")
        result = _run(pytester, "--llm-record-mode", "all")
        calls = len(emulator.log)
    result.assert_outcomes(passed=KINDS)
    result.stdout.fnmatch_lines([f"totals: calls: {KINDS} (replayed: 0)*"])
    return pytester, calls


def test_record_then_replay_every_call_kind_offline(
    recorded: tuple[pytest.Pytester, int], counting: CountingServer
) -> None:
    pytester, calls = recorded
    assert calls == KINDS
    cassettes = sorted((pytester.path / "cassettes" / "test_kinds").glob("*.yaml"))
    assert [c.stem for c in cassettes] == sorted(
        [
            "test_chat",
            "test_chat_async",
            "test_chat_stream",
            "test_fixture_client",
            "test_gemini_generate",
            "test_gemini_stream",
            "test_raw_key_query_and_custom_header",
            "test_responses",
        ]
    )
    assert (
        "text/event-stream"
        in (pytester.path / "cassettes/test_kinds/test_chat_stream.yaml").read_text()
    )
    # another port (scheme/port-agnostic match) that counts connections: replay never connects
    _env(pytester, f"127.0.0.1:{counting.port}")
    result = _run(pytester, "--llm-record-mode", "none", "-v")
    result.assert_outcomes(passed=KINDS)
    result.stdout.fnmatch_lines(
        [
            f"LLM budget preflight: {KINDS} LLM tests, ~0 tokens, *({KINDS} replayed*",
            "no live LLM call reserved budget",
            f"totals: calls: {KINDS} (replayed: {KINDS}), tokens: *, waited: 0.0s, *",
        ]
    )
    assert counting.connections == 0
    # `once` replays existing cassettes too
    once = _run(pytester, "--llm-record-mode", "once")
    once.assert_outcomes(passed=KINDS)
    assert counting.connections == 0


def test_no_key_material_in_cassettes(recorded: tuple[pytest.Pytester, int]) -> None:
    pytester, _ = recorded
    files = list((pytester.path / "cassettes").rglob("*.yaml"))
    assert len(files) == KINDS
    text = "\n".join(f.read_text() for f in files)
    for secret in SECRETS:
        assert secret not in text
    for header in ("authorization:", "x-goog-api-key:", "openai-organization:", "x-custom-secret:"):
        assert header not in text.lower()
    assert "alt=json" in text and "key=" not in text


def test_none_mode_fails_clearly_without_network(
    recorded: tuple[pytest.Pytester, int], counting: CountingServer
) -> None:
    pytester, _ = recorded
    pytester.makepyfile(
        test_new="""
        import openai, pytest

        def ask():
            client = openai.OpenAI(max_retries=0)
            return client.chat.completions.create(
                model="gpt-5", messages=[{"role": "user", "content": "never recorded"}])

        @pytest.mark.llm_budget
        def test_unrecorded():
            ask()

        @pytest.mark.llm_budget
        def test_app_swallows_the_error():
            try:
                ask()
            except Exception:
                pass
        """
    )
    _env(pytester, f"127.0.0.1:{counting.port}")
    result = _run(pytester, "--llm-record-mode", "none", "test_new.py")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*pytest-llm-budget: no recording for 1 request(s) in cassette "
            f"{pytester.path}/cassettes/test_new/test_unrecorded.yaml (record mode 'none'*",
            "*POST http://127.0.0.1:*/v1/chat/completions",
        ]
    )
    assert "test_app_swallows_the_error.yaml" in result.stdout.str()
    assert counting.connections == 0
    assert not (pytester.path / "cassettes" / "test_new").exists()


def test_off_mode_imports_no_vcr(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys, pytest

        @pytest.mark.llm_budget
        def test_x():
            assert "vcr" not in sys.modules
        """
    )
    _run(pytester).assert_outcomes(passed=1)


def test_pytest_recording_vcr_marker_is_left_alone(
    pytester: pytest.Pytester, counting: CountingServer
) -> None:
    pytester.makepyfile(
        test_rec="""
        import openai, pytest

        @pytest.mark.vcr
        @pytest.mark.llm_budget
        def test_theirs():
            r = openai.OpenAI(max_retries=0).chat.completions.create(
                model="gpt-5", messages=[{"role": "user", "content": "theirs"}])
            assert r.choices[0].message.content
        """
    )
    with Emulator() as emulator:
        _env(pytester, f"127.0.0.1:{emulator.port}")
        first = _run(pytester, "--record-mode", "once", "--llm-record-mode", "all")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*(1 left to pytest-recording's vcr marker)"])
    written = [p.relative_to(pytester.path) for p in pytester.path.rglob("*.yaml")]
    assert written == [Path("cassettes/test_rec/test_theirs.yaml")]  # one file, pytest-recording's
    # replay on another port: pytest-recording's own (port-sensitive) matching decides, not ours
    _env(pytester, f"127.0.0.1:{counting.port}")
    replay = _run(pytester, "--record-mode", "none", "--llm-record-mode", "none")
    replay.assert_outcomes(failed=1)
    assert "CannotOverwriteExistingCassetteException" in replay.stdout.str()
    assert "pytest-llm-budget: no recording" not in replay.stdout.str()
    assert counting.connections == 0


# -- the SDK installed (openai 3.x on httpx2, or 2.x on httpx in the legacy venv) -----------------
SDK_SUITE = """
import asyncio, importlib
import openai, pytest

MAJOR = int(openai.__version__.split(".")[0])
HTTP = importlib.import_module("httpx" if MAJOR < 3 else "httpx2")
MSG = [{"role": "user", "content": "sdk"}]


@pytest.mark.llm_budget
def test_app_client():
    client = openai.OpenAI(max_retries=0)
    assert isinstance(client._client, HTTP.Client)  # the legacy venv really runs on httpx
    r = client.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=6000)
    assert r.choices[0].message.content


@pytest.mark.llm_budget
def test_app_async_client():
    async def go():
        client = openai.AsyncOpenAI(max_retries=0)
        r = await client.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=6001)
        return r.choices[0].message.content
    assert asyncio.run(go())


def test_fixture_client(openai_client):
    r = openai_client.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=6002)
    assert r.choices[0].message.content
"""
#: A project's own vcr setup, imported before the plugin routes httpx2/httpx (vcr then saves the
#: unrouted transport methods as its "real" ones).
VCR_FIRST = "import vcr  # noqa: F401\n"


def _report(pytester: pytest.Pytester, name: str) -> dict[str, Any]:
    return cast("dict[str, Any]", json.loads((pytester.path / name).read_text()))


def test_sdk_calls_recorded_paced_and_replayed_free(
    pytester: pytest.Pytester, counting: CountingServer
) -> None:
    """Recorded through the budget even when vcr is imported first; replayed offline, unpaid,
    under either route mode and a budget below one call (a paid call would be too large)."""
    pytester.makeconftest(VCR_FIRST)
    pytester.makepyfile(test_sdk=SDK_SUITE)
    with Emulator() as emulator:
        _env(pytester, f"127.0.0.1:{emulator.port}")
        _run(pytester, "--llm-record-mode", "all", "--llm-report", "rec.json").assert_outcomes(
            passed=3
        )
        assert len(emulator.log) == 3
    recorded = _report(pytester, "rec.json")["calls"]
    assert [(c["replayed"], c["estimated"] > 6000) for c in recorded] == [(False, True)] * 3
    _env(pytester, f"127.0.0.1:{counting.port}")
    for route in ("all", "fixtures"):
        args = ("--llm-record-mode", "none", "--llm-route", route, "--llm-tpm", "5000")
        _run(pytester, *args, "--llm-report", "rep.json").assert_outcomes(passed=3)
        replayed = _report(pytester, "rep.json")
        assert replayed["totals"]["replayed"] == 3 and replayed["totals"]["waited_s"] == 0
        assert [c["cost_usd"] for c in replayed["calls"]] == [0.0] * 3
        assert sorted(c["would_cost_usd"] for c in replayed["calls"]) == sorted(
            c["cost_usd"] for c in recorded
        )
        tokens = sorted((c["prompt_tokens"], c["completion_tokens"]) for c in replayed["calls"])
        assert tokens == sorted((c["prompt_tokens"], c["completion_tokens"]) for c in recorded)
    assert counting.connections == 0


def test_a_cassette_the_project_opened_first_is_left_to_it(pytester: pytest.Pytester) -> None:
    """A user's own vcr cassette open around the test: ours steps aside, theirs records."""
    pytester.makeconftest(
        """
        import pytest, vcr

        @pytest.fixture(autouse=True, scope="session")
        def their_cassette():
            with vcr.use_cassette("theirs.yaml"):
                yield
        """
    )
    pytester.makepyfile(test_sdk=SDK_SUITE)
    with Emulator() as emulator:
        _env(pytester, f"127.0.0.1:{emulator.port}")
        _run(pytester, "--llm-record-mode", "all", "-k", "test_app_client").assert_outcomes(
            passed=1
        )
    assert "/v1/chat/completions" in (pytester.path / "theirs.yaml").read_text()
    assert not (pytester.path / "cassettes").exists()


def test_vcr_httpx_stubs_still_answer_from_a_cassette(tmp_path: Path) -> None:
    """The one vcrpy name outside its documented API (vcr_httpx.vcr_httpx_stubs): a vcrpy
    release that drops or changes the stub factories fails here first."""
    import httpx2
    import vcr

    from pytest_llm_budget.replay.vcr_httpx import HTTPX_PATCHERS, vcr_httpx_stubs

    sent: list[str] = []

    def real(transport: Any, request: Any) -> Any:
        sent.append(str(request.url))
        return httpx2.Response(200, content=b'{"ok": true}', request=request)

    recorder = vcr.VCR(skip_patchers=HTTPX_PATCHERS)  # ValueError if vcr renames the groups
    sync, async_ = vcr_httpx_stubs()
    for _ in range(2):  # records, then replays
        with recorder.use_cassette(str(tmp_path / "c.yaml")) as cassette:
            stub = sync(cassette, real, httpx2)
            response = stub(None, httpx2.Request("GET", "http://llm.test/v1/x"))
            assert response.read() == b'{"ok": true}'
    assert sent == ["http://llm.test/v1/x"]
    assert callable(async_)
