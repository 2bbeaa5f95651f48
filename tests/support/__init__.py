"""Test support shared by tests/ and benchmarks/: colour apps, readiness polls, files, markers.

Modules here are plain code (importable from benchmarks/) except the pytest plugins
`markers` and `kube_fixtures`, which tests/conftest.py loads for the whole test tree.
"""
