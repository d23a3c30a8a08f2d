"""Versions from a model registry (MLflow's): resolve a model's ``source:``, fetch what it points
at into the repository as a local version with its lineage, and say which local version it is.

``client.py`` talks to MLflow's REST API with httpx (``pip install modelgate[mlflow]``; the
``mlflow`` package itself is never needed); ``fetch.py`` writes a version folder atomically;
``sync.py`` decides when to ask, off the decider's tick, under its lease.
"""
