"""The lmsd daemon: owns the models and serves them over HTTP (Unix socket and TCP)."""
