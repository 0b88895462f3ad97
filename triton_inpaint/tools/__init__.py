"""The library's tools, built on it and on the packages built on it (export, client, gateway): the demo,
the benchmarks (``bench``, ``bench-gpu``, ``bench-replicas``, perf_analyzer's runs and the report), the
autoscaling simulation, the lent-GPU session and the generated docs tables. Nothing in the library or
the gateway imports them (tests/test_import_contracts.py)."""
