"""Peer implementations of the benchmark pipeline on other durable-execution systems."""
