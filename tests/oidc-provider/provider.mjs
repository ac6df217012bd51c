// A certified OpenID provider for the end-to-end tests: panva/oidc-provider (OpenID Certified),
// configured as a real deployment would be for APIs, nothing emulated:
//
// - client_credentials grant; RFC 8707 resource indicators pick the access token format:
//   `urn:authz:rs256` / `urn:authz:es256` give JWT access tokens (RFC 9068, `typ: at+jwt`)
//   signed RS256 / ES256, `urn:authz:opaque` gives opaque tokens.
// - RFC 7662 introspection (it refuses to introspect JWTs: 400 `unsupported_token_type`) and
//   RFC 7009 revocation; discovery at /.well-known/openid-configuration; keys at /jwks.
// - Clients: `authz-server` (the resource server that introspects; its secret needs
//   form-urlencoding), `app` (gets tokens), and, when OP_SERVER_JWKS is set,
//   `authz-server-jwt` (introspects, authenticating with private_key_jwt, RFC 7523).
//
// Environment: OP_PORT (0: any free port), OP_RSA_KID / OP_EC_KID (key ids; new key material
// on every start, so a restart with the same kid is a rotation behind a reused kid),
// OP_SERVER_SECRET, OP_AUDIENCE, OP_SERVER_JWKS (public JWKS of `authz-server-jwt`, JSON),
// OP_TTL, OP_TLS_CERT / OP_TLS_KEY (PEM files: the provider's issuer is then
// https://127.0.0.1:TLS_PORT, served over TLS with that certificate; the plain port still
// answers, for the test harness to get and revoke tokens).
// The first stdout line is JSON: {"issuer": ..., "port": ..., "tls_port": ...}.

import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const env = process.env;
const audience = env.OP_AUDIENCE || 'api';
const scope = 'read write admin';

function signingKey(type, options, kid, alg) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

const keys = [
  signingKey('rsa', { modulusLength: 2048 }, env.OP_RSA_KID || `rsa-${randomBytes(4).toString('hex')}`, 'RS256'),
  signingKey('ec', { namedCurve: 'P-256' }, env.OP_EC_KID || `ec-${randomBytes(4).toString('hex')}`, 'ES256'),
];

const resources = {
  'urn:authz:rs256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'urn:authz:es256': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } },
  'urn:authz:opaque': { accessTokenFormat: 'opaque' },
};

const clients = [
  {
    client_id: 'authz-server',
    client_secret: env.OP_SERVER_SECRET || 'b64+like/secret=',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope,
  },
  {
    client_id: 'app',
    client_secret: 'app-secret-0123456789abcdef',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope,
  },
];
if (env.OP_SERVER_JWKS) {
  clients.push({
    client_id: 'authz-server-jwt',
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: JSON.parse(env.OP_SERVER_JWKS),
    scope,
  });
}

const server = createServer();
const tls = env.OP_TLS_CERT
  ? createTlsServer({ cert: readFileSync(env.OP_TLS_CERT), key: readFileSync(env.OP_TLS_KEY) })
  : null;

function listening(srv, port) {
  return new Promise((resolve) => srv.listen(port, '127.0.0.1', () => resolve(srv.address().port)));
}

Promise.all([
  listening(server, Number(env.OP_PORT || 0)),
  tls ? listening(tls, Number(env.OP_TLS_PORT || 0)) : Promise.resolve(null),
]).then(([port, tlsPort]) => {
  const issuer = tlsPort ? `https://127.0.0.1:${tlsPort}` : `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients,
    scopes: ['openid', 'read', 'write', 'admin'],
    jwks: { keys },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    ttl: { ClientCredentials: Number(env.OP_TTL || 600) },
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf || 'urn:authz:opaque',
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resource) => {
          const info = resources[resource];
          if (!info) throw new errors.InvalidTarget();
          return { scope, audience, ...info };
        },
      },
    },
  });
  // Errors the provider answers with go to stderr, for the test's failure output.
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  if (tls) tls.on('request', provider.callback());
  console.log(JSON.stringify({ issuer, port, tls_port: tlsPort }));
});

process.on('SIGTERM', () => process.exit(0));
