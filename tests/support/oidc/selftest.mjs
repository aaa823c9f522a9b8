// Self-test of server.mjs: starts it, then drives discovery, an authorization
// code flow with PKCE (login form, implicit consent), the token exchange
// (client_secret_basic), userinfo, refresh, /test/revoke, revocation and
// RP-initiated logout. Run: `node selftest.mjs` (exit code 0 = all good).
// Uses only Node built-ins (fetch with redirect: 'manual', a tiny cookie jar).

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import assert from 'node:assert/strict';

const here = path.dirname(new URL(import.meta.url).pathname);
const REDIRECT = 'http://127.0.0.1:9/cb';
const LOGOUT_REDIRECT = 'http://127.0.0.1:9/bye';
const client = { client_id: 'selftest', client_secret: 'selftest-secret' };

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'idp-selftest-'));
const configPath = path.join(dir, 'config.json');
fs.writeFileSync(configPath, JSON.stringify({
  clients: [{ ...client, redirect_uris: [REDIRECT], post_logout_redirect_uris: [LOGOUT_REDIRECT] }],
  id_token_ttl: 120,
  access_token_ttl: 60,
}));

const child = spawn(process.execPath, [path.join(here, 'server.mjs')], {
  env: { ...process.env, IDP_CONFIG: configPath, PORT: '0' },
  stdio: ['ignore', 'pipe', process.env.IDP_VERBOSE ? 'inherit' : 'ignore'],
});
const issuer = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error('server did not start')), 20000);
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d;
    const line = buf.split('\n').find((l) => l.startsWith('{'));
    if (line) { clearTimeout(timer); resolve(JSON.parse(line).issuer); }
  });
  child.on('exit', (code) => reject(new Error(`server exited ${code}`)));
});

let passed = 0;
let failed = 0;
async function step(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok - ${name}`);
  } catch (err) {
    failed += 1;
    console.log(`not ok - ${name}\n  ${err.stack}`);
  }
}

// --- a browser in 30 lines ---------------------------------------------------
const jar = new Map();
function storeCookies(res) {
  for (const c of res.headers.getSetCookie()) {
    const [pair] = c.split(';');
    const i = pair.indexOf('=');
    const name = pair.slice(0, i).trim();
    const value = pair.slice(i + 1);
    if (/expires=Thu, 01 Jan 1970/i.test(c) || value === '') jar.delete(name); else jar.set(name, value);
  }
}
async function req(url, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (jar.size) headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  const res = await fetch(url, { ...init, headers, redirect: 'manual' });
  storeCookies(res);
  return res;
}
function formOf(html) {
  const action = /<form[^>]*action="([^"]+)"/.exec(html)?.[1]?.replaceAll('&amp;', '&');
  const fields = new URLSearchParams();
  for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" value="([^"]*)"/g)) fields.set(m[1], m[2]);
  return { action, fields };
}
// Follows redirects on the IdP, logs in when shown the form, submits the logout
// form; stops at the first Location off the IdP (returned) or a non-redirect.
async function browse(url, credentials) {
  let current = url;
  let res = await req(current);
  for (let hop = 0; hop < 20; hop += 1) {
    const location = res.headers.get('location');
    if (location) {
      const next = new URL(location, current).href;
      if (!next.startsWith(`${issuer}/`)) return { stoppedAt: next, status: res.status };
      current = next;
      res = await req(current);
      continue;
    }
    const body = await res.text();
    if (res.status === 200 && body.includes('name="password"') && credentials) {
      const action = new URL(/<form[^>]*action="([^"]+)"/.exec(body)[1], current).href;
      res = await req(action, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ login: credentials[0], password: credentials[1] }).toString(),
      });
      current = action;
      credentials = undefined;
      continue;
    }
    if (res.status === 200 && body.includes('id="op.logoutForm"')) {
      const { action, fields } = formOf(body);
      current = new URL(action, current).href;
      res = await req(current, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: fields.toString(),
      });
      continue;
    }
    return { status: res.status, body, url: current };
  }
  throw new Error('too many hops');
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const basic = `Basic ${Buffer.from(`${encodeURIComponent(client.client_id)}:${encodeURIComponent(client.client_secret)}`).toString('base64')}`;
async function token(params) {
  const res = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(params).toString(),
  });
  return { status: res.status, json: await res.json() };
}
const payloadOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());

async function signIn(user, { scope = 'openid profile email', extra = {} } = {}) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const state = b64url(crypto.randomBytes(12));
  const nonce = b64url(crypto.randomBytes(12));
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: client.client_id,
    response_type: 'code',
    redirect_uri: REDIRECT,
    scope,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...extra,
  }).toString();
  const end = await browse(auth.href, user ? [user, 'password'] : undefined);
  assert.ok(end.stoppedAt, `expected a redirect to the RP, got ${end.status} ${end.body?.slice(0, 300)}`);
  const cb = new URL(end.stoppedAt);
  assert.equal(cb.origin + cb.pathname, REDIRECT);
  assert.equal(cb.searchParams.get('state'), state);
  assert.equal(cb.searchParams.get('iss'), issuer);
  const code = cb.searchParams.get('code');
  assert.ok(code, `no code in ${cb.href}`);
  const t = await token({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT, code_verifier: verifier });
  assert.equal(t.status, 200, JSON.stringify(t.json));
  return { tokens: t.json, nonce, verifier };
}

// --- the checks -------------------------------------------------------------
let alice;

await step('discovery', async () => {
  const res = await fetch(`${issuer}/.well-known/openid-configuration`);
  const d = await res.json();
  assert.equal(d.issuer, issuer);
  assert.deepEqual(d.code_challenge_methods_supported, ['S256']);
  assert.ok(d.end_session_endpoint && d.revocation_endpoint && d.jwks_uri);
  const jwks = await (await fetch(d.jwks_uri)).json();
  assert.equal(jwks.keys[0].kty, 'RSA');
  assert.equal(jwks.keys[0].d, undefined);
});

await step('PKCE is required', async () => {
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: client.client_id, response_type: 'code', redirect_uri: REDIRECT, scope: 'openid', state: 'x',
  }).toString();
  const res = await fetch(auth, { redirect: 'manual' });
  const loc = new URL(res.headers.get('location'));
  assert.equal(loc.searchParams.get('error'), 'invalid_request');
});

await step('wrong password → 401 + form again', async () => {
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: client.client_id, response_type: 'code', redirect_uri: REDIRECT, scope: 'openid',
    code_challenge: b64url(crypto.createHash('sha256').update('x'.repeat(43)).digest()), code_challenge_method: 'S256',
  }).toString();
  const end = await browse(auth.href, ['alice', 'nope']);
  assert.equal(end.status, 401);
  assert.match(end.body, /name="login"/);
});

await step('code flow with PKCE for alice', async () => {
  alice = await signIn('alice');
  const id = payloadOf(alice.tokens.id_token);
  assert.equal(id.iss, issuer);
  assert.equal(id.aud, client.client_id);
  assert.equal(id.sub, 'alice');
  assert.equal(id.nonce, alice.nonce);
  assert.equal(id.email, 'alice@example.com');
  assert.equal(id.email_verified, true);
  assert.equal(id.name, 'Alice Admin');
  assert.deepEqual(id.groups, ['admins', 'staff']);
  assert.equal(id.exp - id.iat, 120);
  assert.ok(alice.tokens.refresh_token, 'refresh token issued');
  assert.equal(alice.tokens.expires_in, 60);
});

await step('userinfo', async () => {
  const res = await fetch(`${issuer}/me`, { headers: { authorization: `Bearer ${alice.tokens.access_token}` } });
  const u = await res.json();
  assert.equal(u.sub, 'alice');
  assert.deepEqual(u.groups, ['admins', 'staff']);
});

await step('SSO: second authorization needs no login', async () => {
  const again = await signIn(undefined);
  assert.equal(payloadOf(again.tokens.id_token).sub, 'alice');
});

await step('refresh grant rotates, old refresh token is dead', async () => {
  const r = await token({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  assert.ok(r.json.id_token && r.json.access_token && r.json.refresh_token);
  assert.notEqual(r.json.refresh_token, alice.tokens.refresh_token);
  const id = payloadOf(r.json.id_token);
  assert.equal(id.sub, 'alice');
  assert.deepEqual(id.groups, ['admins', 'staff']);
  alice.tokens = r.json;
});

await step('/test/revoke kills the refresh token', async () => {
  const res = await fetch(`${issuer}/test/revoke?sub=alice`, { method: 'POST' });
  assert.equal(res.status, 200);
  const r = await token({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token });
  assert.equal(r.status, 400);
  assert.equal(r.json.error, 'invalid_grant');
});

await step('bob and carol claims; groups scope alone', async () => {
  jar.clear();
  const bob = payloadOf((await signIn('bob')).tokens.id_token);
  assert.equal(bob.email, 'bob@example.org');
  assert.deepEqual(bob.groups, ['staff']);
  jar.clear();
  const carol = payloadOf((await signIn('carol', { scope: 'openid email groups' })).tokens.id_token);
  assert.equal(carol.email, 'carol@other.test');
  assert.equal(carol.email_verified, false);
  assert.deepEqual(carol.groups, []);
  assert.equal(carol.name, undefined);
});

await step('revocation endpoint', async () => {
  jar.clear();
  const s = await signIn('bob');
  const res = await fetch(`${issuer}/token/revocation`, {
    method: 'POST',
    headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: s.tokens.refresh_token, token_type_hint: 'refresh_token' }).toString(),
  });
  assert.equal(res.status, 200);
  const r = await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token });
  assert.equal(r.json.error, 'invalid_grant');
});

await step('RP-initiated logout', async () => {
  jar.clear();
  const s = await signIn('alice');
  const end = new URL(`${issuer}/session/end`);
  end.search = new URLSearchParams({
    id_token_hint: s.tokens.id_token, post_logout_redirect_uri: LOGOUT_REDIRECT, state: 'bye-state',
  }).toString();
  const out = await browse(end.href);
  assert.equal(out.stoppedAt, `${LOGOUT_REDIRECT}?state=bye-state`);
  // the IdP session is gone: a new authorization request shows the login form
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: client.client_id, response_type: 'code', redirect_uri: REDIRECT, scope: 'openid',
    code_challenge: b64url(crypto.createHash('sha256').update('y'.repeat(43)).digest()), code_challenge_method: 'S256',
  }).toString();
  const again = await browse(auth.href);
  assert.equal(again.status, 200);
  assert.match(again.body, /name="password"/);
  // and the session-bound refresh token was revoked with the grant
  const r = await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token });
  assert.equal(r.json.error, 'invalid_grant');
});

await step('offline_access + prompt=consent survives logout; reused refresh token revokes grant', async () => {
  jar.clear();
  const s = await signIn('bob', { scope: 'openid offline_access', extra: { prompt: 'consent' } });
  assert.ok(s.tokens.refresh_token);
  assert.match(s.tokens.scope, /offline_access/);
  const end = new URL(`${issuer}/session/end`);
  end.search = new URLSearchParams({ id_token_hint: s.tokens.id_token, post_logout_redirect_uri: LOGOUT_REDIRECT }).toString();
  assert.equal((await browse(end.href)).stoppedAt, LOGOUT_REDIRECT);
  const r1 = await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token });
  assert.equal(r1.status, 200, JSON.stringify(r1.json));
  const reuse = await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token });
  assert.equal(reuse.json.error, 'invalid_grant');
  const r2 = await token({ grant_type: 'refresh_token', refresh_token: r1.json.refresh_token });
  assert.equal(r2.json.error, 'invalid_grant');
});

child.kill('SIGTERM');
fs.rmSync(dir, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
