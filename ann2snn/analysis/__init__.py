"""Analysis of converted networks: accuracy curves, per-layer diagnostics, the rounding ceiling."""
