// The cross-origin guide's API (its api.go), in Node: every request gets
//   { "message": "HELLO WORLD", "user": { email, name, sub }, "assertion_verified": true }
// where the user comes from Postern's identity assertion
// (X-Postern-Jwt-Assertion, ES256), verified with jose against Postern's
// published keys (/.well-known/postern/jwks.json). The routes in front of
// this server need `pass_identity_headers: true`.
//
// OPTIONS (a CORS preflight that `cors_allow_preflight` let through without
// a session) gets 204 and no headers of its own: the route's
// set_response_headers carry the guide's CORS headers.
//
// Environment:
//   PORT               listen port (default 8102; 0 = any)
//   LISTEN_HOST        listen address of the API (default 127.0.0.1; the
//                      admin listener stays on 127.0.0.1)
//   POSTERN_JWKS_URLS  comma-separated JWKS URLs (default
//                      https://authenticate.cors.localhost:8443/.well-known/postern/jwks.json);
//                      names under .localhost are loopback (RFC 6761)
//   POSTERN_CA         PEM file of the CA that signed Postern's certificate
//                      (default .demo/ca.pem next to this file)
//   ADMIN_PORT         if set, GET http://127.0.0.1:ADMIN_PORT/requests lists
//                      the requests this API answered (the browser test reads it)
//   EXIT_ON_STDIN_EOF  1: exit when stdin closes (test harnesses)
// Stdout gets one JSON line once listening: {"api":"http://LISTEN_HOST:PORT","admin":...}

import * as dns from 'node:dns';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLocalJWKSet, jwtVerify } from 'jose';

const here = path.dirname(fileURLToPath(import.meta.url));
const port = Number.parseInt(process.env.PORT ?? '8102', 10);
const host = process.env.LISTEN_HOST || '127.0.0.1';
const jwksUrls = (process.env.POSTERN_JWKS_URLS
  ?? 'https://authenticate.cors.localhost:8443/.well-known/postern/jwks.json')
  .split(',').map((s) => s.trim()).filter(Boolean);
const caFile = process.env.POSTERN_CA ?? path.join(here, '.demo', 'ca.pem');
const ca = fs.existsSync(caFile) ? fs.readFileSync(caFile) : undefined;
const log = (...args) => console.error(new Date().toISOString(), '[api]', ...args);

// ---------------------------------------------------------------------------
// Postern's keys

// `localhost` and every name under it are loopback (RFC 6761); glibc alone
// does not resolve `authenticate.cors.localhost`, so say it here.
function lookup(hostname, options, callback) {
  if (hostname === 'localhost' || hostname.endsWith('.localhost')) {
    if (options?.all) callback(null, [{ address: '127.0.0.1', family: 4 }]);
    else callback(null, '127.0.0.1', 4);
    return;
  }
  dns.lookup(hostname, options, callback);
}

function getJson(url) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, lookup, timeout: 5000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) reject(new Error(`${url}: HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
        else {
          try { resolve(JSON.parse(text)); } catch (e) { reject(new Error(`${url}: not JSON: ${e.message}`)); }
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: timed out`)));
    req.on('error', reject);
  });
}

let keySet = null;
let fetchedAt = 0;

// Every Postern listed may sign (each has its own key unless `signing_key`
// is shared); keys are told apart by `kid`.
async function refreshKeys() {
  fetchedAt = Date.now();
  const sets = await Promise.allSettled(jwksUrls.map(getJson));
  const keys = [];
  for (const [i, s] of sets.entries()) {
    if (s.status === 'fulfilled') keys.push(...(s.value.keys ?? []));
    else log('cannot fetch', jwksUrls[i], s.reason.message);
  }
  keySet = createLocalJWKSet({ keys });
}

async function key(header, token) {
  if (!keySet) await refreshKeys();
  try {
    return await keySet(header, token);
  } catch (err) {
    // A key we have not seen (Postern restarted with a new one): fetch
    // again, at most once a second.
    if (Date.now() - fetchedAt < 1000) throw err;
    await refreshKeys();
    return keySet(header, token);
  }
}

// The assertion is for the host the browser called: Postern signs it with
// `iss` the request's host and `aud` the route's host, which are one and
// the same for these routes, and tells us the host in X-Forwarded-Host.
async function verify(req) {
  const token = req.headers['x-postern-jwt-assertion'];
  if (!token) return { verified: false, error: 'no identity assertion (is pass_identity_headers on?)' };
  const host = String(req.headers['x-forwarded-host'] ?? '').replace(/:\d+$/, '');
  try {
    const { payload } = await jwtVerify(token, key, {
      algorithms: ['ES256'],
      issuer: host,
      audience: host,
      maxTokenAge: '5m',
    });
    return { verified: true, user: { email: payload.email, name: payload.name, sub: payload.sub } };
  } catch (err) {
    return { verified: false, error: `identity assertion rejected: ${err.code ?? err.name}: ${err.message}` };
  }
}

// ---------------------------------------------------------------------------
// the API

const seen = [];
const SEEN_LIMIT = 1000;

function record(req, status, result) {
  seen.push({
    at: new Date().toISOString(),
    method: req.method,
    path: req.url,
    host: req.headers['x-forwarded-host'] ?? null,
    origin: req.headers.origin ?? null,
    status,
    email: result?.user?.email ?? null,
    assertion_verified: result?.verified ?? false,
  });
  if (seen.length > SEEN_LIMIT) seen.splice(0, seen.length - SEEN_LIMIT);
}

function send(res, status, body) {
  if (body === undefined) {
    res.writeHead(status);
    res.end();
    return;
  }
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const api = http.createServer(async (req, res) => {
  req.resume();
  if (req.method === 'OPTIONS') {
    record(req, 204, null);
    send(res, 204);
    return;
  }
  const result = await verify(req);
  if (!result.verified) {
    log(req.method, req.url, '->', 401, result.error);
    record(req, 401, result);
    send(res, 401, { message: 'HELLO WORLD', user: null, assertion_verified: false, error: result.error });
    return;
  }
  log(req.method, req.url, '->', 200, result.user.email);
  record(req, 200, result);
  send(res, 200, { message: 'HELLO WORLD', user: result.user, assertion_verified: true });
});

await new Promise((resolve, reject) => {
  api.once('error', reject);
  api.listen(port, host, resolve);
});
const out = { api: `http://${host}:${api.address().port}`, admin: null };

if (process.env.ADMIN_PORT !== undefined) {
  const admin = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/requests') send(res, 200, seen);
    else send(res, 404, { error: 'not found' });
  });
  await new Promise((resolve, reject) => {
    admin.once('error', reject);
    admin.listen(Number.parseInt(process.env.ADMIN_PORT, 10), '127.0.0.1', resolve);
  });
  out.admin = `http://127.0.0.1:${admin.address().port}`;
}

process.stdout.write(`${JSON.stringify(out)}\n`);
log('listening', out.api, 'keys from', jwksUrls.join(', '), ca ? `(CA ${caFile})` : '(system CAs)');

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
if (process.env.EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
