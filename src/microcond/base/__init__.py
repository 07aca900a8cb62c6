"""Foundations every stage uses, with no microcond import of their own: child processes that
die with their parent, atomic file writes, rank-0-first ordering of data-parallel processes."""
