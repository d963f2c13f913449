"""The `lms` command line client. Import-light: never imports `daemon` or an engine."""
