"""shoes-vz cli."""
