// A real OpenID Connect issuer for matrix-oidc-bridge's tests, built on oidc-provider 9.x.
//
// Configuration (environment variables):
//   ISSUER_PORT            port to listen on, 127.0.0.1 only (required)
//   ISSUER_URL             exact issuer string as published in discovery and `iss`
//                          (default `http://127.0.0.1:<ISSUER_PORT>/`, WITH trailing slash)
//   BRIDGE_CLIENT_ID       confidential client for introspection + revocation; it may
//   BRIDGE_CLIENT_SECRET   authenticate with client_secret_basic or client_secret_post
//   ACCESS_TOKEN_FORMAT    `opaque` (default) or `jwt`
//   ACCESS_TOKEN_ALG       with `jwt`: `RS256` (default) or `ES256`
//   ACCESS_TOKEN_TTL       access token lifetime in seconds (default 3600)
//   MAS_SHARED_SECRET      optional: introspection also accepts `Authorization: Bearer
//                          <secret>`, as matrix-authentication-service accepts its
//                          matrix.secret, and answers it as it answers the bridge client
//
// Everything is in memory: a restart forgets clients, grants and tokens. The signing keys
// at start are fixed (oidc-provider's development RSA key, kid `keystore-CHANGE-ME`, and
// the P-256 key below, kid `es256-1`), so the JWKS is the same across restarts.
//
// Test-only endpoints, answered to loopback peers only:
//   GET /_test/counters -> {"introspection": N, "revocation": M, "jwks": J,
//     "introspection_max_inflight": K} (the most introspections ever handled at once)
//   POST /_test/counters/reset -> 204
//   POST /_test/keys/rotate -> {"kid": new, "kids": published}: a new key for
//     ACCESS_TOKEN_ALG is published (first) and signs every access token from now on;
//     the older keys stay published, so their tokens stay valid
//   POST /_test/keys/retire -> {"kids": published}: every key of ACCESS_TOKEN_ALG but
//     the one that signs now is no longer published
//
// For the bridge's own login layer: dynamic registration accepts confidential clients with
// back-channel logout (backchannel_logout_uri; the logout tokens are sent to 127.0.0.1 only),
// refresh tokens are rotated on every use, and the resource owner password credentials grant
// (`grant_type=password`, which oidc-provider does not ship) is served for clients registered
// with it: any username, whose password is `password-of-<username>`.

import crypto from 'node:crypto';
import http from 'node:http';

// oidc-provider warns "Unsupported runtime" at import time on Node 20; it works fine there.
const originalWarn = console.warn;
console.warn = (...args) => {
  if (typeof args[0] === 'string' && args[0].includes('Unsupported runtime')) return;
  originalWarn(...args);
};
const { default: Provider, errors: oidcErrors } = await import('oidc-provider');
// Not exported: used to swap the provider's keys while it runs (/_test/keys/*).
const { default: initializeKeystore } = await import('oidc-provider/lib/helpers/initialize_keystore.js');
const { default: DEV_KEYSTORE } = await import('oidc-provider/lib/consts/dev_keystore.js');

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`test issuer: environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
}

const port = Number.parseInt(requireEnv('ISSUER_PORT'), 10);
const issuer = process.env.ISSUER_URL || `http://127.0.0.1:${port}/`;
const bridgeClientId = requireEnv('BRIDGE_CLIENT_ID');
const bridgeClientSecret = requireEnv('BRIDGE_CLIENT_SECRET');
const accessTokenFormat = process.env.ACCESS_TOKEN_FORMAT || 'opaque';
const accessTokenTTL = Number.parseInt(process.env.ACCESS_TOKEN_TTL || '3600', 10);
const accessTokenAlg = process.env.ACCESS_TOKEN_ALG || 'RS256';
const masSharedSecret = process.env.MAS_SHARED_SECRET || '';

if (!['opaque', 'jwt'].includes(accessTokenFormat)) {
  console.error(`test issuer: ACCESS_TOKEN_FORMAT must be opaque or jwt, not ${accessTokenFormat}`);
  process.exit(2);
}
if (!['RS256', 'ES256'].includes(accessTokenAlg)) {
  console.error(`test issuer: ACCESS_TOKEN_ALG must be RS256 or ES256, not ${accessTokenAlg}`);
  process.exit(2);
}
if (!(accessTokenTTL > 0)) {
  console.error('test issuer: ACCESS_TOKEN_TTL must be a positive integer');
  process.exit(2);
}

// The one resource server: the Matrix client-server API. Every authorization and token
// request defaults to it, so Matrix scopes land in the access token.
const MATRIX_RESOURCE = 'urn:matrix:client';
const API_SCOPES = ['urn:matrix:client:api:*', 'urn:matrix:org.matrix.msc2967.client:api:*'];
// Device scopes (stable and MSC2967-unstable) and any other Matrix/Synapse scope a test asks
// for (e.g. `urn:synapse:admin:*`) are accepted as requested.
const DYNAMIC_SCOPE = /^urn:(?:matrix|synapse):\S+$/;
const MATRIX_API_SCOPE = new Set(API_SCOPES);

function dynamicScopes(ctx) {
  const oidc = ctx?.oidc;
  const sources = [
    oidc?.params?.scope,
    oidc?.entities?.AuthorizationCode?.scope,
    oidc?.entities?.RefreshToken?.scope,
  ];
  const found = new Set();
  for (const source of sources) {
    if (typeof source !== 'string') continue;
    for (const scope of source.split(' ')) {
      if (DYNAMIC_SCOPE.test(scope)) found.add(scope);
    }
  }
  return [...found];
}

// Private JWKs, newest first. The fixed ones first: tokens survive a restart.
const FIXED_EC_KEY = {
  kty: 'EC',
  crv: 'P-256',
  x: 'gRBw-MV8rw4hYcoDYZFEpfHNzFj1IPyZFgax_H-1ob4',
  y: 'xtI7Y7imn5gKRqXFNVTGT_HgYunD8SrRBn7Cd3IkW0Y',
  d: 'obICV-HOWkxrAo7oVH9CjuMwWtFSewwTHRusFbzImYw',
  kid: 'es256-1',
  alg: 'ES256',
  use: 'sig',
};
let signingKeys = [...DEV_KEYSTORE.keys.map((key) => ({ ...key, alg: 'RS256' })), FIXED_EC_KEY];
// The kid that signs access tokens now.
let accessTokenKid = signingKeys.find((key) => key.alg === accessTokenAlg).kid;

function newKey(alg) {
  const { privateKey } = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `${alg.toLowerCase()}-${crypto.randomBytes(4).toString('hex')}`;
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

const counters = {
  introspection: 0, revocation: 0, jwks: 0, introspection_max_inflight: 0,
};
let introspectionInflight = 0;
const ROUTES = {
  introspection: '/token/introspection', revocation: '/token/revocation', jwks: '/jwks',
};

const configuration = {
  clients: [{
    client_id: bridgeClientId,
    client_secret: bridgeClientSecret,
    // client_secret_basic and client_secret_post are interchangeable in oidc-provider 9.
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  }],
  cookies: { keys: ['matrix-oidc-bridge-test-issuer'] },
  jwks: { keys: signingKeys },
  routes: ROUTES,
  findAccount(_ctx, id) {
    // devInteractions accepts any login; the typed login is the account id (Matrix localpart).
    return { accountId: id, claims: () => ({ sub: id, preferred_username: id }) };
  },
  extraTokenClaims(_ctx, token) {
    return token.accountId ? { username: token.accountId } : undefined;
  },
  // Tokens outlive the browser session of the interaction.
  expiresWithSession: () => false,
  // Every refresh hands out a new refresh token and uses the old one up.
  rotateRefreshToken: true,
  issueRefreshToken(_ctx, client, source) {
    return client.grantTypeAllowed('refresh_token')
      && (source.scopes.has('offline_access') || [...source.scopes].some((s) => MATRIX_API_SCOPE.has(s)));
  },
  // Explicit lifetimes (seconds) also keep oidc-provider's "default ttl" notices quiet.
  ttl: {
    AccessToken: accessTokenTTL,
    Grant: 14 * 86400,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 14 * 86400,
    Session: 14 * 86400,
  },
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    registration: { enabled: true, initialAccessToken: false },
    introspection: {
      enabled: true,
      // The bridge may introspect any token; other clients only their own.
      allowedPolicy: (ctx, client, token) => client.clientId === bridgeClientId
        || token.clientId === client.clientId,
    },
    revocation: {
      enabled: true,
      allowedPolicy: (ctx, client, token) => client.clientId === bridgeClientId
        || token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => MATRIX_RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo(ctx, resourceIndicator) {
        if (resourceIndicator !== MATRIX_RESOURCE) {
          throw new oidcErrors.InvalidTarget();
        }
        const scope = [...new Set([...API_SCOPES, ...dynamicScopes(ctx)])].join(' ');
        return {
          scope,
          audience: MATRIX_RESOURCE,
          accessTokenTTL,
          accessTokenFormat,
          ...(accessTokenFormat === 'jwt'
            ? { jwt: { sign: { alg: accessTokenAlg, kid: accessTokenKid } } }
            : {}),
        };
      },
    },
  },
  // Outgoing calls (jwks_uri, sector_identifier_uri, ...) may only go to 127.0.0.1.
  // The default SSRF guard refuses loopback, so its dispatcher is dropped here.
  fetch(url, options) {
    const { hostname } = new URL(url);
    if (hostname !== '127.0.0.1') {
      throw new Error(`test issuer refuses outgoing call to ${hostname}: loopback only`);
    }
    const { dispatcher: _dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
};

const provider = new Provider(issuer, configuration);

// Resource owner password credentials (RFC 6749 §4.3), for the bridge's opt-in password login.
// The grant, access token and refresh token are made as oidc-provider makes them for a code,
// so that introspection, revocation and the refresh grant treat them alike.
provider.registerGrantType('password', async (ctx) => {
  const { client, params } = ctx.oidc;
  const { InvalidGrant, InvalidRequest } = oidcErrors;
  if (!params.username || !params.password) {
    throw new InvalidRequest('username and password are required');
  }
  if (params.password !== `password-of-${params.username}`) {
    throw new InvalidGrant('invalid credentials');
  }
  const accountId = params.username;
  const requested = new Set((params.scope || '').split(' ').filter(Boolean));
  const info = configuration.features.resourceIndicators.getResourceServerInfo(ctx, MATRIX_RESOURCE);
  const resourceServer = new provider.ResourceServer(MATRIX_RESOURCE, info);
  const apiScope = [...requested].filter((s) => resourceServer.scopes.has(s)).join(' ');
  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addOIDCScope([...requested].filter((s) => s === 'openid').join(' '));
  grant.addResourceScope(MATRIX_RESOURCE, apiScope);
  const grantId = await grant.save();

  const at = new provider.AccessToken({
    accountId, client, grantId, gty: 'password', scope: apiScope,
  });
  at.resourceServer = resourceServer;
  const accessToken = await at.save();
  const rt = new provider.RefreshToken({
    accountId,
    client,
    grantId,
    gty: 'password',
    resource: MATRIX_RESOURCE,
    rotations: 0,
    scope: ['openid', ...apiScope.split(' ')].join(' '),
    expiresWithSession: false,
  });
  const refreshToken = await rt.save();
  ctx.body = {
    access_token: accessToken,
    expires_in: at.expiration,
    refresh_token: refreshToken,
    scope: apiScope,
    token_type: 'Bearer',
  };
}, new Set(['username', 'password', 'scope']));

function isLoopback(address) {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

function publishKeys(keys) {
  signingKeys = keys;
  initializeKeystore.call(provider, { keys: signingKeys });
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/_test/') && !isLoopback(ctx.req.socket.remoteAddress)) {
    ctx.status = 403;
    return;
  }
  if (ctx.path === '/_test/keys/rotate' && ctx.method === 'POST') {
    const key = newKey(accessTokenAlg);
    publishKeys([key, ...signingKeys]);
    accessTokenKid = key.kid;
    ctx.body = { kid: key.kid, kids: signingKeys.map((k) => k.kid) };
    return;
  }
  if (ctx.path === '/_test/keys/retire' && ctx.method === 'POST') {
    publishKeys(signingKeys.filter((k) => k.alg !== accessTokenAlg || k.kid === accessTokenKid));
    ctx.body = { kids: signingKeys.map((k) => k.kid) };
    return;
  }
  if (ctx.method === 'GET' && ctx.path === ROUTES.jwks) counters.jwks += 1;
  if (ctx.path === '/_test/counters' && ctx.method === 'GET') {
    ctx.body = { ...counters };
    return;
  }
  if (ctx.path === '/_test/counters/reset' && ctx.method === 'POST') {
    for (const key of Object.keys(counters)) counters[key] = 0;
    ctx.status = 204;
    return;
  }
  if (ctx.method === 'POST' && ctx.path === ROUTES.introspection) {
    if (masSharedSecret && ctx.get('authorization') === `Bearer ${masSharedSecret}`) {
      // MAS's shared-secret introspection, answered as for the bridge client.
      const basic = `${encodeURIComponent(bridgeClientId)}:${encodeURIComponent(bridgeClientSecret)}`;
      ctx.req.headers.authorization = `Basic ${Buffer.from(basic).toString('base64')}`;
    }
    counters.introspection += 1;
    introspectionInflight += 1;
    counters.introspection_max_inflight = Math.max(
      counters.introspection_max_inflight,
      introspectionInflight,
    );
    try {
      await next();
    } finally {
      introspectionInflight -= 1;
    }
    return;
  }
  if (ctx.method === 'POST' && ctx.path === ROUTES.revocation) counters.revocation += 1;
  await next();
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.on('grant.error', (_ctx, err) => console.error('grant.error', err.message));
provider.on('backchannel.error', (_ctx, err) => console.error('backchannel.error', err.message));

const server = http.createServer(provider.callback());
server.keepAliveTimeout = 5000;

function shutdown(signal) {
  console.log(`issuer stopping on ${signal}`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.on('error', (err) => {
  console.error(`test issuer: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`issuer ready on ${issuer}`);
});
