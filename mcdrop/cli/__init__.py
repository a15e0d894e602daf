"""The ``mcdrop`` command line: one module per command (score, train, evaluate, bench, serve)."""
