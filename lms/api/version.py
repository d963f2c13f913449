"""Versions of the package and of the HTTP API the daemon speaks."""

__version__ = "0.1.0"

# Bumped when an admin endpoint the CLI relies on changes shape.
API_VERSION = 1

# Every daemon response carries its API_VERSION in this header; `lms` checks it.
API_VERSION_HEADER = "X-Lmsd-Api-Version"
