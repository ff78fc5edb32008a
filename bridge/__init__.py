"""matrix-oidc-bridge: OAuth-native Matrix in front of a legacy homeserver."""

__version__ = "0.1.0"
# What the bridge calls itself in its own requests.
USER_AGENT = f"matrix-oidc-bridge/{__version__}"
