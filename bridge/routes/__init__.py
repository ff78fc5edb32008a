"""HTTP routes of the client face."""
