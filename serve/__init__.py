"""The operator's tools: the ``varedit-serve`` command, the embedded single-machine platform, the
Redis launcher it uses and the API-key admin commands."""
