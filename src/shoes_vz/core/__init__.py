"""Plain types shared by every package. Imports nothing else of shoes-vz."""
