"""Helpers shared by the test suites (fixtures stay in the conftest.py files)."""
