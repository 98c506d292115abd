"""Benchmarks of notify-server (docs/benchmarks.md). Run with scripts/bench.sh."""
