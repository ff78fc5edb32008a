"""The bridge as the homeserver's application service: identity strategies and provisioning."""
