"""Uncertainty: pure functions of MC samples ``(S, B, ...)`` returning ``(B, ...)`` (summaries, OOD density,
conformal sets and intervals, abstention, stopping rules, acquisition scores, metrics), and a model's calibration."""
