"""The autoscaler: observes pools in Redis, decides worker counts, applies them via a backend.

Only the local process backend exists so far; ``modelgate up`` uses it for a fixed worker count.
"""
