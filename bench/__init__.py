"""Benchmarks and the seeded log generator (see README.md)."""
