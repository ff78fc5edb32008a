"""matrix-oidc-bridge: OAuth-native Matrix in front of a legacy homeserver."""

__version__ = "0.1.0"
