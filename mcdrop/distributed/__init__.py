"""Scoring beyond one process, on an existing distributed engine.  Needs Ray (``mcdrop[ray]``)."""
