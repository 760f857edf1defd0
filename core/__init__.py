"""The foundation every other package builds on: file I/O, fingerprints, record keys, registries, task names.

It imports nothing of ours (``tests/test_architecture.py`` checks), so any layer may use it.
"""
