"""``make bench``: modelgate against other ways of serving the same model, on this machine.

``bench.run`` is the entry point. The pieces, so that more servers and models can be added:

- ``workloads``: a model to serve plus the request that loads it and the answer to expect
  (a tiny MLP; a compute-bound model).
- ``targets``: servers under test, each with ``start``/``stop`` (modelgate, a two-gateway
  variant, the naive baseline in ``naive_server``); ``peer`` is the BentoML peer, run from the
  isolated venv that ``peer_venv`` builds, with its service in ``peer_bentoml/``.
- ``floor``: ONNX Runtime alone on the same model, no server: the compute floor (every core)
  and the batch-size curve (one thread).
- ``load``: load points (concurrency, duration) and the load generator (wrk, else the Python
  one in ``pyclient``), always a separate process.
- ``cpu``: where the CPU went during a point, and whether other work disturbed it.
- ``results``: what was measured; ``goals``: the verdicts; ``report`` and ``plot``:
  ``docs/benchmarks.md`` and ``docs/benchmarks.png``.
"""
