"""Reporting: the terminal summary, JSON/HTML reports, chart, metrics and notices."""
