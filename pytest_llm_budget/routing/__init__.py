"""Routing: every LLM request's path from the client to the budget and back."""
