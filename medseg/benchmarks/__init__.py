"""Benchmarks that print figures (samples/s, ratios); nothing here asserts timings."""
