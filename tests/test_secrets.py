"""No credential in any output: URL masking, usage errors, reports, replay misses, a full scan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, running_redis

from pytest_llm_budget.emulator import Emulator
from pytest_llm_budget.redact import mask_url, redact
from pytest_llm_budget.settings import Settings

REDIS_PW = "s3cretRedisPw"


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly", *args
    )


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[RedisServer]:
    with running_redis(password=REDIS_PW) as server:
        yield server


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw1@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw1@h:6380/2", "rediss://user:***@h:6380/2"),
        ("redis://pw1@h/0", "redis://***@h/0"),
        ("redis://h:6379/0?password=pw1&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis:/:pw1@127.0.0.1:6379/0", "redis:/:***@127.0.0.1:6379/0"),  # mistyped
        ("redis://:p/w1@h/0", "redis://:***@h/0"),  # a slash in the password
        ("http://h:1/v1beta/models/m:generateContent?key=pw1&alt=sse",
         "http://h:1/v1beta/models/m:generateContent?key=***&alt=sse"),
        ("https://h/x?api_key=pw1&access_token=pw1&client_secret=pw1&sig=pw1",
         "https://h/x?api_key=***&access_token=***&client_secret=***&sig=***"),
        ("unix:///tmp/r.sock?db=0", "unix:///tmp/r.sock?db=0"),
        ("https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1/chat/completions"),
        ("file:/tmp/state.json", "file:/tmp/state.json"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "pw1" not in redact(f"failed: {url!r}; see <{url}>")


def test_report_settings_mask_every_url() -> None:
    settings = Settings(
        backend="redis://127.0.0.1:6379/0?password=pw1",
        pushgateway="https://ci:pw1@push.example/",
        hosts=("https://u:pw1@llm.example",),
    )
    assert "pw1" not in repr(settings.public())


def test_redis_password_stays_out_of_reports(
    pytester: pytest.Pytester, redis_with_password: RedisServer
) -> None:
    """Defect 1: `?password=` was written in plain text into the JSON and HTML reports."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    for backend in (
        f"redis://127.0.0.1:{redis_with_password.port}/0?password={REDIS_PW}",
        f"redis://:{REDIS_PW}@127.0.0.1:{redis_with_password.port}/0",
    ):
        result = _run(
            pytester, "--llm-backend", backend, "--llm-report", "r.json", "--llm-report", "r.html"
        )
        result.assert_outcomes(passed=1)
        for name in ("r.json", "r.html"):
            text = (pytester.path / name).read_text()
            assert str(redis_with_password.port) in text
            assert REDIS_PW not in text, name
        assert REDIS_PW not in result.stdout.str() + result.stderr.str()


def test_mistyped_backend_url_error_hides_the_password(pytester: pytest.Pytester) -> None:
    """Defect 2: a mistyped backend URL was echoed with its password in the usage error."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    for backend in ("redis:/:s3cretpw@127.0.0.1:6379/0", "redis//:s3cretpw@127.0.0.1:6379/0"):
        result = _run(pytester, "--llm-backend", backend)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        err = result.stderr.str()
        assert "--llm-backend" in err and "127.0.0.1:6379" in err
        assert "s3cretpw" not in err + result.stdout.str()


def test_replay_miss_hides_a_query_key(pytester: pytest.Pytester) -> None:
    """Defect 3a: a Gemini `?key=` reached the terminal and junit via the replay-miss message."""
    pytester.makepyfile(
        test_miss="""
        import httpx2, pytest

        @pytest.mark.llm_budget
        def test_unrecorded():
            httpx2.post(
                "http://127.0.0.1:9/v1beta/models/gemini-2.5-pro:generateContent?key=AIzaSyMISSKEY",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
        """
    )
    result = _run(pytester, "--llm-record-mode", "none", "--junitxml", "junit.xml", "-rA")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "no recording for 1 request(s)" in out
    assert "generateContent?key=***" in out
    assert "AIzaSyMISSKEY" not in out + result.stderr.str()
    assert "AIzaSyMISSKEY" not in (pytester.path / "junit.xml").read_text()


# -- the secret scan: record and replay with real-looking keys, grep everything the run made ----
OPENAI_KEY = "sk-proj-SCANOPENAIKEY0123456789abcdef"
GEMINI_KEY = "AIzaSySCANGEMINIKEY0123456789abcd"
QUERY_KEY = "AIzaSySCANQUERYKEY0123456789abcde"
ORG = "org-SCANORGANISATION42"
SECRETS = (OPENAI_KEY, GEMINI_KEY, QUERY_KEY, ORG, REDIS_PW)

SCAN_SUITE = '''
import asyncio, os
import httpx2, openai, pytest
from google import genai


def test_fixture_openai(openai_client):
    r = openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "fixture"}], max_tokens=20)
    assert r.choices[0].message.content


def test_fixture_async_openai(async_openai_client):
    async def go():
        r = await async_openai_client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "async"}], max_tokens=20)
        return r.choices[0].message.content
    assert asyncio.run(go())


def test_fixture_gemini(gemini_client):
    r = gemini_client.models.generate_content(model="gemini-2.5-pro", contents="gem")
    assert r.text


@pytest.mark.llm_budget(tokens=500)
def test_app_openai_with_organization():
    client = openai.OpenAI(
        api_key=os.environ["SCAN_OPENAI_KEY"], organization=os.environ["SCAN_ORG"], max_retries=0)
    r = client.responses.create(model="gpt-5", input="responses", max_output_tokens=20)
    assert r.output_text


@pytest.mark.llm_budget(tokens=500)
def test_app_gemini_stream():
    client = genai.Client(api_key=os.environ["SCAN_GEMINI_KEY"])
    parts = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="gs"))
    assert "".join(p.text or "" for p in parts).strip()


@pytest.mark.llm_budget(tokens=500)
def test_raw_query_key():
    base = os.environ["GOOGLE_GEMINI_BASE_URL"]
    url = base + "v1beta/models/gemini-2.5-pro:generateContent?key=" + os.environ["SCAN_QUERY_KEY"]
    r = httpx2.post(url, json={"contents": [{"parts": [{"text": "raw"}]}]},
                    headers={"x-goog-api-key": os.environ["SCAN_GEMINI_KEY"]})
    assert r.status_code == 200, r.text


@pytest.mark.llm_budget(tokens=500)
def test_fails_after_a_call(openai_client):
    openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "then fail"}], max_tokens=20)
    print("client:", openai_client.base_url)
    assert False, "a failing test's report must carry no key either"
'''
SCAN_MISS = '''
import os
import httpx2, pytest


@pytest.mark.llm_budget(tokens=500)
def test_unrecorded_query_key():
    base = os.environ["GOOGLE_GEMINI_BASE_URL"]
    url = base + "v1beta/models/gemini-2.5-pro:generateContent?key=" + os.environ["SCAN_QUERY_KEY"]
    httpx2.post(url, json={"contents": [{"parts": [{"text": "never recorded"}]}]})
'''
SCAN_TESTS = 7


def _scan(root: Path, outputs: list[str]) -> list[str]:
    """Where any secret appears: files under `root` (any type) and the captured outputs."""
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            found += [f"{path}: {s}" for s in SECRETS if s.encode() in blob]
    for i, text in enumerate(outputs):
        found += [f"output {i}: {s}" for s in SECRETS if s in text]
    return found


def test_secret_scan_of_a_recorded_and_replayed_run(
    pytester: pytest.Pytester, redis_with_password: RedisServer
) -> None:
    pytester.makepyfile(test_scan=SCAN_SUITE)
    port = redis_with_password.port
    backends = (
        f"redis://:{REDIS_PW}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password={REDIS_PW}",
    )
    env = pytester._monkeypatch
    env.setenv("OPENAI_API_KEY", OPENAI_KEY)
    env.setenv("OPENAI_ORG_ID", ORG)
    env.setenv("GEMINI_API_KEY", GEMINI_KEY)
    env.delenv("GOOGLE_API_KEY", raising=False)
    for name, value in (("OPENAI_KEY", OPENAI_KEY), ("GEMINI_KEY", GEMINI_KEY),
                        ("QUERY_KEY", QUERY_KEY), ("ORG", ORG)):
        env.setenv(f"SCAN_{name}", value)  # the test files themselves must hold no secret
    outputs: list[str] = []

    def run(tag: str, backend: str, *args: str) -> pytest.RunResult:
        result = _run(
            pytester, *args, "--llm-backend", backend, "-rA", "-v", "--log-level=DEBUG",
            "--llm-report", f"{tag}.json", "--llm-report", f"{tag}.html",
            "--junitxml", f"{tag}.xml", "--llm-metrics-textfile", f"{tag}.prom",
        )
        outputs.extend([result.stdout.str(), result.stderr.str()])
        return result

    with Emulator() as emulator:
        env.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
        env.setenv("GOOGLE_GEMINI_BASE_URL", emulator.gemini_base_url)
        recorded = run("record", backends[0], "--llm-record-mode", "all")
    recorded.assert_outcomes(passed=SCAN_TESTS - 1, failed=1)
    assert len(list((pytester.path / "cassettes").rglob("*.yaml"))) == SCAN_TESTS

    pytester.makepyfile(test_scan_miss=SCAN_MISS)
    env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # replay must not connect
    env.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9/")
    replayed = run("replay", backends[1], "--llm-record-mode", "none")
    replayed.assert_outcomes(passed=SCAN_TESTS - 1, failed=2)
    replayed.stdout.fnmatch_lines(["*no recording for 1 request(s)*", "*?key=****"])

    produced = {p.name for p in pytester.path.iterdir()}
    assert {"record.json", "record.html", "record.xml", "record.prom"} <= produced
    assert {"replay.json", "replay.html", "replay.xml", "replay.prom"} <= produced
    assert _scan(pytester.path, outputs) == []


def test_a_traceback_holding_a_key_is_masked(pytester: pytest.Pytester) -> None:
    """Frames show their arguments: a URL with `?key=` in one is masked in terminal and junit."""
    pytester.makepyfile(
        """
        import os

        def send(url):
            raise ConnectionError("refused")

        def test_fails():
            send("https://h/v1beta/models/m:generateContent?key=" + os.environ["TB_KEY"])

        def test_unrelated_failure_keeps_its_traceback():
            assert 1 + 1 == 3
        """
    )
    pytester._monkeypatch.setenv("TB_KEY", "AIzaSyTRACEBACKKEY123")
    result = _run(pytester, "--junitxml", "junit.xml")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "url = 'https://h/v1beta/models/m:generateContent?key=***'" in out
    assert "ConnectionError: refused" in out and "assert (1 + 1) == 3" in out
    assert "AIzaSyTRACEBACKKEY123" not in out + (pytester.path / "junit.xml").read_text()
