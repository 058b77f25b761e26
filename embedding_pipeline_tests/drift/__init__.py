"""Drift stats, checks, alerts and the drift domain in Dagster, on copies of one seeded template database."""
