"""Data stages: scan, report, buckets, crop, loader (see DESIGN.md). No model imports here."""
