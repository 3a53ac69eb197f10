"""Nomad: typed job models with Nomad's exact JSON field names, and the benchmark job builder."""
