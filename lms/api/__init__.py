"""The wire contract shared by the daemon and the CLI: plain typed data, no I/O."""
