"""The bridge as a client of the OAuth/OIDC issuer: its HTTP calls made one way (http),
discovery (metadata), signing keys (jwks), introspection, the login client (oauth)."""
