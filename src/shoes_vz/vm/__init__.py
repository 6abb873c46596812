"""Runner bundles, clones, identities and the `vm run` process with its drivers."""
