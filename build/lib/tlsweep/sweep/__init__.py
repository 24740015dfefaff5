"""Sweep-level work: every job checked before the first runs (`plan`), the context a sweep hands its jobs
(`context`), the Hydra callback that opens and closes the parent run (`callback`), and the comparison it logs
(`summary`, with its `figures` and the `depth` profile and CKA)."""
