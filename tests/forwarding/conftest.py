"""The forwarder's fixtures, shared with tests/test_proxy.py."""

from tests.test_proxy import bridge, issuer, make_bridge

__all__ = ["bridge", "issuer", "make_bridge"]
