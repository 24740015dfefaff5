"""What talks to MLflow: the store and its runs, the names a run carries and the record read back from it, and
the payloads and models written into runs.

Only `store` (with `pyfunc_model`, the code MLflow runs to load a logged pipeline) imports mlflow; the others
go through it.
"""
