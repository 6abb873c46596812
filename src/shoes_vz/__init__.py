"""shoes-vz: ephemeral macOS VMs on Apple Silicon as GitHub Actions runners for myshoes."""

__version__ = "0.1.0"
__all__ = ["__version__"]
