// A real OpenID Connect provider (panva/oidc-provider) for Postern's
// integration tests. NOT for production: fixed users, in-memory state, test
// hooks that revoke tokens without authentication.
//
// Start: IDP_CONFIG=/path/config.json PORT=0 node server.mjs
// Stdout gets exactly one line, once listening: {"issuer":"http://127.0.0.1:PORT"}
// Everything else (logs, library warnings) goes to stderr.
//
// IDP_CONFIG (JSON):
//   {
//     "clients": [{ "client_id", "client_secret", "redirect_uris": [],
//                   "post_logout_redirect_uris": [],
//                   "token_endpoint_auth_method": "client_secret_basic" (default) }],
//     "id_token_ttl": 300,          // seconds
//     "access_token_ttl": 300,      // seconds
//     "refresh_token_ttl": 86400,   // seconds
//     "rotate_refresh_token": true  // a refresh grant returns a NEW refresh token and
//                                   // consumes the old one; reusing a consumed one
//                                   // revokes the whole grant (invalid_grant)
//   }
//
// Users (password "password" for all): alice, bob, carol (see USERS below).
//
// Routes besides the standard ones (discovery: /.well-known/openid-configuration):
//   GET  /interaction/:uid        login form: <form method="post" action="/interaction/:uid/login">
//                                 with inputs "login" and "password"
//   POST /interaction/:uid/login  checks credentials; 303 to /auth/:uid (resume) on success,
//                                 401 + the form again on failure. Consent is implicit.
//   GET  /test/health             200 "ok"
//   POST /test/revoke?sub=alice   destroys every grant of that account and every token
//                                 (refresh, access, code) issued under them. With
//                                 &sessions=1 also ends the account's IdP sessions, so the
//                                 next authorization request needs a fresh login.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

// oidc-provider prints notices with console.info/console.log; stdout is
// reserved for the single JSON line the harness waits for.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const log = (...args) => console.error(new Date().toISOString(), '[idp]', ...args);

const { default: Provider } = await import('oidc-provider');

// ---------------------------------------------------------------------------
// configuration

const configPath = process.env.IDP_CONFIG;
const config = configPath ? JSON.parse(fs.readFileSync(configPath, 'utf8')) : {};
const port = Number.parseInt(process.env.PORT ?? '0', 10);
const ID_TOKEN_TTL = Number(config.id_token_ttl ?? 300);
const ACCESS_TOKEN_TTL = Number(config.access_token_ttl ?? 300);
const REFRESH_TOKEN_TTL = Number(config.refresh_token_ttl ?? 24 * 60 * 60);
const ROTATE_REFRESH_TOKEN = config.rotate_refresh_token ?? true;

const clients = (config.clients ?? []).map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  redirect_uris: c.redirect_uris ?? [],
  post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
  token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
}));

const USERS = {
  alice: {
    email: 'alice@example.com', email_verified: true, name: 'Alice Admin', groups: ['admins', 'staff'],
  },
  bob: {
    email: 'bob@example.org', email_verified: true, name: 'Bob Builder', groups: ['staff'],
  },
  carol: {
    email: 'carol@other.test', email_verified: false, name: 'Carol', groups: [],
  },
};
const PASSWORD = 'password';

// ---------------------------------------------------------------------------
// in-memory adapter that can be enumerated (for /test/revoke)

const stores = new Map(); // model name -> Map(id -> { payload, expiresAt })

function storeFor(model) {
  if (!stores.has(model)) stores.set(model, new Map());
  return stores.get(model);
}

function live(entry) {
  return entry && (entry.expiresAt === undefined || entry.expiresAt > Date.now());
}

class Adapter {
  constructor(model) {
    this.model = model;
    this.store = storeFor(model);
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    this.store.set(id, { payload, expiresAt });
  }

  async find(id) {
    const entry = this.store.get(id);
    if (!live(entry)) {
      this.store.delete(id);
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    for (const [id, entry] of this.store) {
      if (entry.payload.uid === uid) return this.find(id);
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [id, entry] of this.store) {
      if (entry.payload.userCode === userCode) return this.find(id);
    }
    return undefined;
  }

  async consume(id) {
    const entry = this.store.get(id);
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    this.store.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const [id, entry] of this.store) {
      if (entry.payload.grantId === grantId) this.store.delete(id);
    }
  }
}

function revokeAccount(sub, { sessions }) {
  const grantIds = new Set();
  const counts = {};
  const grants = storeFor('Grant');
  for (const [id, entry] of grants) {
    if (entry.payload.accountId === sub) {
      grantIds.add(id);
      grants.delete(id);
      counts.Grant = (counts.Grant ?? 0) + 1;
    }
  }
  for (const [model, store] of stores) {
    if (model === 'Grant' || model === 'Session' || model === 'Interaction') continue;
    for (const [id, entry] of store) {
      const p = entry.payload;
      if (p.accountId === sub || (p.grantId && grantIds.has(p.grantId))) {
        store.delete(id);
        counts[model] = (counts[model] ?? 0) + 1;
      }
    }
  }
  if (sessions) {
    const store = storeFor('Session');
    for (const [id, entry] of store) {
      if (entry.payload.accountId === sub) {
        store.delete(id);
        counts.Session = (counts.Session ?? 0) + 1;
      }
    }
  }
  return counts;
}

// ---------------------------------------------------------------------------
// provider

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };

function htmlEscape(s) {
  return String(s).replace(/[&<>"']/g, (ch) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  }[ch]));
}

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  responseTypes: ['code'],
  pkce: { required: () => true }, // only S256 exists in oidc-provider 9
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'groups'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Scope claims go into the ID token too, not only into userinfo.
  conformIdTokenClaims: false,
  // Every client allowed the refresh_token grant gets a refresh token, with
  // or without offline_access. Without offline_access the grant is bound to
  // the IdP session: RP-initiated logout (logout=yes) revokes it.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => ROTATE_REFRESH_TOKEN,
  ttl: {
    AccessToken: () => ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: () => ID_TOKEN_TTL,
    RefreshToken: () => REFRESH_TOKEN_TTL,
    Interaction: 10 * 60,
    Session: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
  },
  features: {
    devInteractions: { enabled: false },
    // Revoking a refresh token (or code) revokes its whole grant, i.e. also
    // the access tokens issued with it (oidc-provider's revokeGrantPolicy).
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
    },
    introspection: { enabled: true },
    claimsParameter: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // `form` is <form id="op.logoutForm" method="post" action=".../session/end/confirm">
      // with a hidden "xsrf" input. We add logout=yes (full sign-out of the IdP
      // session) and auto-submit it for real browsers; scripted clients submit
      // the form themselves (see idp.rs `browse`).
      async logoutSource(ctx, form) {
        const withLogout = form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>');
        ctx.type = 'html';
        ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign out</title></head>
<body>
<h1>Signing out of ${htmlEscape(ctx.host)}</h1>
${withLogout}
<button type="submit" form="op.logoutForm">Sign out</button>
<script>document.forms[0].submit()</script>
</body></html>`;
      },
      async postLogoutSuccessSource(ctx) {
        ctx.type = 'html';
        ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signed out</title></head><body><h1>Signed out</h1></body></html>';
      },
    },
  },
  async findAccount(_ctx, sub) {
    const user = USERS[sub];
    if (!user) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, ...user };
      },
    };
  },
  // Implicit consent: whatever OIDC scopes / claims the client asks for are
  // granted, so the user never sees a consent page.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    if (!oidc.session.accountId) return undefined;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== oidc.session.accountId) {
      grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
    }
    const scopes = [...oidc.requestParamOIDCScopes].join(' ');
    if (scopes) grant.addOIDCScope(scopes);
    const claims = [...oidc.requestParamClaims];
    if (claims.length) grant.addOIDCClaims(claims);
    await grant.save();
    return grant;
  },
  async renderError(ctx, out, error) {
    log('error page:', out, error?.message);
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>IdP error</title></head><body>
<h1>IdP error</h1>
${Object.entries(out).map(([k, v]) => `<pre id="${htmlEscape(k)}">${htmlEscape(k)}: ${htmlEscape(v)}</pre>`).join('\n')}
</body></html>`;
  },
});

provider.on('server_error', (_ctx, err) => log('server_error', err));
const detail = (err) => [err.message, err.error_description, err.error_detail].filter(Boolean).join(' | ');
provider.on('grant.error', (_ctx, err) => log('grant.error', detail(err)));
provider.on('authorization.error', (_ctx, err) => log('authorization.error', detail(err)));
provider.on('end_session.error', (_ctx, err) => log('end_session.error', detail(err)));
provider.on('revocation.error', (_ctx, err) => log('revocation.error', detail(err)));
provider.on('userinfo.error', (_ctx, err) => log('userinfo.error', detail(err)));
provider.on('end_session.success', () => log('end_session.success'));
provider.on('grant.revoked', (_ctx, grantId) => log('grant.revoked', grantId));

// ---------------------------------------------------------------------------
// interactions and test hooks (Koa middleware in front of the provider)

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function loginPage(uid, clientId, error) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in to ${htmlEscape(clientId)}</h1>
${error ? `<p id="error">${htmlEscape(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${htmlEscape(uid)}/login">
<input type="text" name="login" autofocus>
<input type="password" name="password">
<button type="submit">Sign in</button>
</form>
</body></html>`;
}

async function grantConsent(details) {
  const { prompt: { details: pd }, params, session } = details;
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  if (!grant) grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (pd.missingOIDCScope) grant.addOIDCScope(pd.missingOIDCScope.join(' '));
  if (pd.missingOIDCClaims) grant.addOIDCClaims(pd.missingOIDCClaims);
  if (pd.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(pd.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  return grant.save();
}

const INTERACTION = /^\/interaction\/([^/]+)(\/login)?$/;

provider.use(async (ctx, next) => {
  const started = Date.now();
  try {
    await handle(ctx, next);
  } finally {
    log(ctx.method, ctx.originalUrl, '->', ctx.status, `${Date.now() - started}ms`);
  }
});

async function handle(ctx, next) {
  if (ctx.path === '/test/health' && ctx.method === 'GET') {
    ctx.body = 'ok';
    return;
  }
  if (ctx.path === '/test/revoke' && ctx.method === 'POST') {
    const sub = ctx.query.sub;
    if (!sub) {
      ctx.status = 400;
      ctx.body = 'sub required';
      return;
    }
    const sessions = ['1', 'true', 'yes'].includes(String(ctx.query.sessions ?? ''));
    const counts = revokeAccount(String(sub), { sessions });
    log('test revoke', sub, counts);
    ctx.type = 'json';
    ctx.body = JSON.stringify({ sub, revoked: counts });
    return;
  }

  const m = INTERACTION.exec(ctx.path);
  if (!m) {
    await next();
    return;
  }
  ctx.set('cache-control', 'no-store');
  const [, uid, isLogin] = m;

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    log('interaction lookup failed', uid, err.message);
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><body><h1>Unknown or expired sign-in session</h1><pre id="error">${htmlEscape(err.message)}</pre></body></html>`;
    return;
  }
  if (details.uid !== uid) {
    ctx.status = 400;
    ctx.body = 'interaction mismatch';
    return;
  }

  const { prompt, params } = details;

  if (!isLogin && ctx.method === 'GET') {
    if (prompt.name === 'login') {
      ctx.type = 'html';
      ctx.body = loginPage(uid, params.client_id);
      return;
    }
    if (prompt.name === 'consent') {
      // Normally unreachable (loadExistingGrant grants everything), kept as a
      // safety net: grant and continue without showing a page.
      const grantId = await grantConsent(details);
      const to = await provider.interactionResult(ctx.req, ctx.res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      ctx.status = 303;
      ctx.redirect(to);
      return;
    }
    ctx.status = 400;
    ctx.body = `unsupported prompt ${prompt.name}`;
    return;
  }

  if (isLogin && ctx.method === 'POST') {
    const form = await readForm(ctx.req);
    const login = form.get('login') ?? '';
    const password = form.get('password') ?? '';
    if (!Object.hasOwn(USERS, login) || password !== PASSWORD) {
      log('login failed for', JSON.stringify(login));
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginPage(uid, params.client_id, 'Invalid login or password');
      return;
    }
    log('login ok', login, 'client', params.client_id);
    const to = await provider.interactionResult(
      ctx.req,
      ctx.res,
      { login: { accountId: login } },
      { mergeWithLastSubmission: false },
    );
    ctx.status = 303;
    ctx.redirect(to);
    return;
  }

  ctx.status = 405;
  ctx.body = 'method not allowed';
}

// ---------------------------------------------------------------------------

server.on('request', provider.callback());
server.on('error', (err) => log('server error', err));

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
log('listening', issuer, 'clients', clients.map((c) => c.client_id).join(','));

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    log('exiting on', signal);
    process.exit(0);
  });
}
// The Rust harness holds our stdin open and sets IDP_EXIT_ON_STDIN_EOF=1:
// EOF then means the test process is gone (belt and braces next to PDEATHSIG).
if (process.env.IDP_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => { log('stdin closed, exiting'); process.exit(0); });
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
