"""Benchmarks: each prints its table and writes JSON."""
