"""What talks to MLflow: the store and its runs, and the run record that names what a run carries.

Only `store` imports mlflow; the others go through it.
"""
