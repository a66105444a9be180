"""Per-provider wire knowledge: the `Provider` protocol (base.py), one module per vendor, and the
registry (registry.py) that picks a request's provider."""
