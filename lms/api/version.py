"""Versions of the package and of the HTTP API the daemon speaks."""

__version__ = "0.1.0"

# Bumped when an admin endpoint the CLI relies on changes shape.
API_VERSION = 1
