"""Comparisons across tasks, methods and seeds: suites, the resumable runner, and the report."""
