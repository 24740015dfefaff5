"""What talks to MLflow: the store and its runs, the names a run carries and the record read back from it, and
the payloads and models written into runs.

Only `store` imports mlflow, with `pyfunc_model` (the code MLflow runs to load a logged pipeline) and the child
process of `prepared` (a new store's schema); the others go through it.
"""
