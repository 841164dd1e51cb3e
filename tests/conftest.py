"""Shared pytest configuration. Area fixtures live in tests/<area>/conftest.py."""

import os

# testcontainers' Ryuk reaper image cannot be pulled on hosts without registry access;
# fixtures clean up their own containers instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
