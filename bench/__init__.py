"""Benchmarks: each compares our path with the raw baseline in the same run (`make bench-*`)."""
