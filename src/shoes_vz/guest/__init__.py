"""shoes-vz guest."""
