"""Benchmarks that print figures (memory, throughput); run with `python -m medseg.benchmarks.<name>`."""
