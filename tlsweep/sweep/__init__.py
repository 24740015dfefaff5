"""Sweep-level work: the context a sweep hands its jobs, the Hydra callback, and the comparison summary."""
