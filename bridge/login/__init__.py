"""The bridge's own legacy login layer, for a generic OIDC issuer (a ``login`` section).

- :mod:`bridge.login.sso`: ``/login/sso/redirect`` → the issuer (code + PKCE) →
  callback → confirmation page → ``redirectUrl?loginToken=...``;
- :mod:`bridge.login.matrix`: ``GET``/``POST /login`` (``m.login.token``, the
  opt-in ``m.login.password``), ``/refresh``, ``/logout``, ``/logout/all``;
- :mod:`bridge.login.backchannel`: OpenID Connect Back-Channel Logout 1.0;
- :mod:`bridge.login.service`: logging devices in and ending sessions;
- :mod:`bridge.login.jwts`: ID token and logout token checks;
- :mod:`bridge.login.pages`: the confirmation and error pages.

The issuer calls are :mod:`bridge.issuer.oauth`'s; what is kept lives in the
store (:mod:`bridge.store.records`); the logout moments every request is
checked against are :mod:`bridge.auth.logout_moments`'s.
"""
