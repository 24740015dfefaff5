"""tlsweep's performance benchmark: run `python -m benchmarks.run` from the repository root."""
