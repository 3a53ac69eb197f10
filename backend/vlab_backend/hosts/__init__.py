"""The host SDK and the WireGuard mesh: host registration, mesh addresses, config rendering."""
