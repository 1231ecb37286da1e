"""Benchmarks and checks against a running service, and the peer servers they compare it with."""
