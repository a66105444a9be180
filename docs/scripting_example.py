"""Pace a script's OpenAI calls with pytest-llm-budget, outside pytest (see README).

Run: OPENAI_API_KEY=... python docs/scripting_example.py  (OPENAI_BASE_URL for another server)
"""

from __future__ import annotations

import openai

from pytest_llm_budget import budget_session, wrap

with budget_session(tpm=3000, window=2, notice_after=0.5, reports=["script-run.html"]) as session:
    client = wrap(openai.OpenAI(max_retries=0), session)
    for n in range(4):
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=[{"role": "user", "content": f"One line about the number {n}."}],
        )
        print(n, reply.choices[0].message.content)
# Leaving the block printed the `LLM budget` summary and wrote script-run.html.
