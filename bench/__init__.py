"""``make bench``: modelgate against other ways of serving the same model, on this machine.

``bench.run`` is the entry point. The pieces, so that more servers and models can be added:

- ``workloads``: a model to serve plus the request that loads it and the answer to expect.
- ``targets``: servers under test, each with ``start``/``stop`` (modelgate, the naive baseline
  in ``naive_server``); a peer such as BentoML or raw ORT is one more entry in ``TARGETS``.
- ``load``: load points (concurrency, duration) and the load generator (wrk, else the Python
  one in ``pyclient``), always a separate process.
- ``cpu``: where the CPU went during a point, and whether other work disturbed it.
- ``report``: the side-by-side table, the goal checks and ``docs/benchmarks.md``.
"""
