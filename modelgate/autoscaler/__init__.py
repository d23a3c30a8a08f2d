"""The autoscaler: observes pools in Redis, decides worker counts, applies them via a backend.

Backends: local processes (``modelgate up``), Docker Engine, and Kubernetes (the Deployment
scale subresource).
"""
