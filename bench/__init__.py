"""Benchmarks (not tests). Run each from the repository root as a module, for example
``.venv/bin/python -m bench.ratio --quick``: the root is then on ``sys.path``, so the scripts
import ``bench.lib`` and ``tests.factories`` without touching it. See bench/README.md.
"""
