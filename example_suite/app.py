"""A small LLM app: ask OpenAI, Gemini or Claude a question under a scenario, get an answer.

The scenario's vantage policy goes into the system prompt; grounding turns on the vendor's search
tool (OpenAI Responses `web_search`, Gemini `google_search`, Anthropic's `web_search` server
tool). Base URLs and keys come from the environment (`OPENAI_BASE_URL`, `OPENAI_API_KEY`,
`GOOGLE_GEMINI_BASE_URL`, `GEMINI_API_KEY`, `ANTHROPIC_BASE_URL`, `ANTHROPIC_API_KEY`), as the
SDKs read them; replaying cassettes needs none of them (the plugin sees to that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MAX_TOKENS = 6000
VANTAGE_PROMPTS = {
    "NONE": "Answer from general knowledge; assume no particular location.",
    "ALS_ONLY": "Answer for the user's stated location (ambient location signal) only.",
    "PROXY_ONLY": "Answer as seen from the egress proxy's country only.",
    "ALS_PLUS_PROXY": "Answer for the user's stated location, checked against the proxy country.",
}


@dataclass(frozen=True)
class Answer:
    """What the app returns: who answered, under which scenario, the text and its token cost."""

    vendor: str
    model: str
    vantage: str
    grounded: bool
    text: str
    prompt_tokens: int
    completion_tokens: int


def _system_prompt(vantage: str, grounding: str) -> str:
    """The system prompt of a scenario: its vantage policy and grounding rule."""
    rule = {
        "off": "Do not search the web.",
        "auto": "Search the web when it helps.",
        "required": "Always search the web before answering.",
    }[grounding]
    return f"{VANTAGE_PROMPTS[vantage]} {rule}"


def ask_openai(question: str, model: str, vantage: str, grounding: str) -> Answer:
    """Ask OpenAI: chat completions when ungrounded, Responses with web_search when grounded."""
    import openai

    client = openai.OpenAI()
    system = _system_prompt(vantage, grounding)
    if grounding == "off":
        chat = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_completion_tokens=MAX_TOKENS,
        )
        usage = chat.usage
        return Answer(
            "openai",
            model,
            vantage,
            False,
            chat.choices[0].message.content or "",
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )
    response = client.responses.create(
        model=model,
        instructions=system,
        input=question,
        tools=[{"type": "web_search"}],
        tool_choice="required" if grounding == "required" else "auto",
        max_output_tokens=MAX_TOKENS,
    )
    usage = response.usage
    return Answer(
        "openai",
        model,
        vantage,
        True,
        response.output_text,
        usage.input_tokens if usage else 0,
        usage.output_tokens if usage else 0,
    )


def ask_gemini(question: str, model: str, vantage: str, grounding: str) -> Answer:
    """Ask Gemini with google-genai; grounding adds the google_search tool."""
    from google import genai
    from google.genai import types

    client = genai.Client(
        http_options=types.HttpOptions(
            base_url=os.environ.get("GOOGLE_GEMINI_BASE_URL"), api_version="v1"
        )
    )
    tools = [types.Tool(google_search=types.GoogleSearch())] if grounding != "off" else None
    result = client.models.generate_content(
        model=model,
        contents=question,
        config=types.GenerateContentConfig(
            system_instruction=_system_prompt(vantage, grounding),
            max_output_tokens=MAX_TOKENS,
            tools=tools,
        ),
    )
    usage = result.usage_metadata
    return Answer(
        "gemini",
        model,
        vantage,
        grounding != "off",
        result.text or "",
        (usage.prompt_token_count or 0) if usage else 0,
        (usage.candidates_token_count or 0) if usage else 0,
    )


def ask_anthropic(question: str, model: str, vantage: str, grounding: str) -> Answer:
    """Ask Claude with the anthropic SDK; grounding adds the web_search server tool."""
    import anthropic

    client = anthropic.Anthropic()
    extra: dict[str, object] = {}
    if grounding != "off":
        extra["tools"] = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
        extra["tool_choice"] = {"type": "any" if grounding == "required" else "auto"}
    reply = client.messages.create(
        model=model,
        max_tokens=MAX_TOKENS,
        system=_system_prompt(vantage, grounding),
        messages=[{"role": "user", "content": question}],
        **extra,  # type: ignore[arg-type]
    )
    usage = reply.usage
    cache = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    return Answer(
        "anthropic",
        model,
        vantage,
        grounding != "off",
        "".join(block.text for block in reply.content if block.type == "text"),
        usage.input_tokens + cache,
        usage.output_tokens,
    )


def ask(question: str, *, vendor: str, model: str, vantage: str, grounding: str) -> Answer:
    """Ask `vendor`'s `model` a question under a vantage policy and grounding mode."""
    if vantage not in VANTAGE_PROMPTS:
        raise ValueError(f"unknown vantage policy {vantage!r}")
    if vendor == "openai":
        return ask_openai(question, model, vantage, grounding)
    if vendor == "gemini":
        return ask_gemini(question, model, vantage, grounding)
    if vendor == "anthropic":
        return ask_anthropic(question, model, vantage, grounding)
    raise ValueError(f"unknown vendor {vendor!r}")
