"""The forwarder's fixtures, shared with tests/forward/test_forwarder.py."""

from tests.forward.test_forwarder import bridge, issuer, make_bridge

__all__ = ["bridge", "issuer", "make_bridge"]
