"""Reliability: kill -9 trials, bad input, concurrency, hostile config, provider faults, secrets."""
