"""Benchmarks of the student, each run offline on the vendored data under data/."""
