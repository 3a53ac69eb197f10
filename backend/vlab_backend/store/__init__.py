"""Persistence: the SQLAlchemy schema and the session factory."""
