"""Nomad: typed job models with Nomad's exact JSON field names, the benchmark job builder, the
API client (python-nomad, retried) and the one allocation watcher for every benchmark job."""
