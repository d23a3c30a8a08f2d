"""The shared core: wire format, Redis keys and records, repository, settings, errors,
statistics and drift maths. It imports no service (gateway, worker, autoscaler) and no entry
point; ``make lint`` holds that rule (import-linter, see pyproject.toml)."""
