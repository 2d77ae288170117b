"""Benchmark specs, one module per paper; importing this package registers them."""

from commonspace.bench.specs import bidnn, cvs, hashing, ima, ssl  # noqa: F401
