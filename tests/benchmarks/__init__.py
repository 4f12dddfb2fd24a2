"""Benchmarks of vvflow against the seed design and the machine's limits (not collected
by pytest): run ``python tests/benchmarks/bench.py --quick``."""
