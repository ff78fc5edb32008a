"""Bearer token → Matrix identity: verification, caching and the auth middleware."""
