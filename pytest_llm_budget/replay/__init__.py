"""Replay: vcrpy cassettes for LLM tests, over both httpx stacks."""
