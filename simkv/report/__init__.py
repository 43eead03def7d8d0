"""Reporting: the console summary table, charts and Markdown reports."""
