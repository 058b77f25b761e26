"""cutover."""
