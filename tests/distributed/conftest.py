"""The scripts here run in subprocesses (see tests/test_distributed.py), never in pytest's
process: they need 8 (or 4) virtual devices set before JAX is imported."""

collect_ignore_glob = ["*.py"]
