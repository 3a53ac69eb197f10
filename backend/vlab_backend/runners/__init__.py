"""Runners execute a job spec somewhere: `local` (a pinned subprocess) or `nomad`."""
