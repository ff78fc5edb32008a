"""The bridge as a client of the OAuth/OIDC issuer: discovery and introspection."""
