"""Benchmark suites and their entry point (`python -m bench.run`); recorded results live in bench/results/."""
