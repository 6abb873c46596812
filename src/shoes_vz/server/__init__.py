"""shoes-vz server."""
