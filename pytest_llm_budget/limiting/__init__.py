"""Limiting: the session limiter, its buckets and the sliding-window rules."""
