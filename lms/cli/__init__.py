"""The `lms` command groups; `main.py` assembles them, `output.py` renders."""
