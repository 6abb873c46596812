"""shoes-vz agent."""
