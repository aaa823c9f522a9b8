// The cross-origin guide in a real browser: Debian's Chromium, driven by
// playwright-core, signs in through the bundled OpenID provider's login page
// and presses the example SPA's buttons (examples/cross-origin/app), checking
// what the page shows AND what the API answered (the API lists its requests
// at API_ADMIN_URL/requests).
//
// One phase per running Postern, each in a fresh browser context (its own
// cookie jar), each with the config where its approach applies:
//   guide          config.yaml as the guide has it: the problem (401), and
//                  neither the header nor the cookie call works there
//   single-domain  single-domain.yaml: POST location.origin + '/api'
//   header         header.yaml: X-Pomerium-Authorization from document.cookie
//   shared-cookie  shared-cookie.yaml: credentials: 'include'
//   demo           demo.yaml: all of the above on one page, plus api2.'s
//                  `cors:` policy, allowed from app. and blocked from other.
//
// Environment (tests/cross_origin.rs sets it; the defaults fit run.sh):
//   CROSS_ORIGIN_PORTS   phase=port,... of the running Posterns (default demo=8443)
//   CROSS_ORIGIN_PARENT  parent domain of the hosts (default cors.localhost)
//   API_ADMIN_URL        the API server's admin listener (default http://127.0.0.1:8103)
//   ARTIFACTS_DIR        where screenshots go (default tests/artifacts)
//   CHROMIUM             the browser (default /usr/bin/chromium)
//   IDP_LOGIN, IDP_PASSWORD, EXPECT_EMAIL   (alice, password, alice@example.com)
//   BROWSER_TEST_TIMEOUT_MS                 whole run (default 180000)
// Exits 0 when every check passed; otherwise prints what failed and exits 1.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const env = process.env;
const parent = env.CROSS_ORIGIN_PARENT ?? 'cors.localhost';
const adminUrl = env.API_ADMIN_URL ?? 'http://127.0.0.1:8103';
const artifacts = path.resolve(repo, env.ARTIFACTS_DIR ?? 'tests/artifacts');
const executablePath = env.CHROMIUM ?? '/usr/bin/chromium';
const login = env.IDP_LOGIN ?? 'alice';
const password = env.IDP_PASSWORD ?? 'password';
const email = env.EXPECT_EMAIL ?? 'alice@example.com';
const overallTimeout = Number(env.BROWSER_TEST_TIMEOUT_MS ?? 180_000);
const ports = Object.fromEntries(
  (env.CROSS_ORIGIN_PORTS ?? 'demo=8443').split(',').filter(Boolean).map((kv) => {
    const [k, v] = kv.split('=');
    return [k.trim(), Number(v)];
  }),
);

const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
const say = (...args) => console.log(`[${elapsed()}]`, ...args);

class CheckFailed extends Error {}
let checks = 0;
function check(cond, message, detail) {
  checks += 1;
  if (!cond) {
    throw new CheckFailed(`${message}${detail === undefined ? '' : `\n  saw: ${typeof detail === 'string' ? detail : JSON.stringify(detail, null, 2)}`}`);
  }
}

if (!fs.existsSync(executablePath)) {
  console.error(`no browser at ${executablePath}: run scripts/install-test-deps.sh (installs Debian's chromium)`);
  process.exit(1);
}
const unknown = Object.keys(ports).filter((p) => !['guide', 'single-domain', 'header', 'shared-cookie', 'demo'].includes(p));
if (unknown.length || Object.values(ports).some((p) => !Number.isInteger(p) || p <= 0)) {
  console.error(`CROSS_ORIGIN_PORTS: expected phase=port,... with phases guide, single-domain, header, shared-cookie, demo; got ${env.CROSS_ORIGIN_PORTS}`);
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.error(`FAILED: the browser test took longer than ${overallTimeout} ms`);
  process.exit(1);
}, overallTimeout);

// ---------------------------------------------------------------------------
// helpers

let lastPage = null;
const shots = [];
const origin = (label, port) => `https://${label}.${parent}:${port}`;

/** What the API answered so far. */
async function apiRequests() {
  const resp = await fetch(`${adminUrl}/requests`, { signal: AbortSignal.timeout(5000) });
  if (!resp.ok) throw new Error(`${adminUrl}/requests: HTTP ${resp.status}`);
  return resp.json();
}

/** Signs in through the real login page, in a fresh context. */
async function signIn(browser, port) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 900 } });
  context.setDefaultTimeout(20_000);
  const page = await context.newPage();
  lastPage = page;
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  const navigations = [];
  page.on('request', (r) => {
    if (r.isNavigationRequest() && r.frame() === page.mainFrame()) navigations.push(`${r.method()} ${r.url()}`);
  });
  const app = `${origin('app', port)}/`;
  await page.goto(app);
  check(/\/interaction\/[^/]+$/.test(new URL(page.url()).pathname),
    `opening ${app} without a session leads to the IdP's login page`, page.url());
  await page.fill('input[name="login"]', login);
  await page.fill('input[name="password"]', password);
  await Promise.all([page.waitForURL(app, { timeout: 20_000 }), page.click('button[type="submit"]')]);
  await page.waitForSelector('#run-problem');
  const hops = navigations.map((n) => n.replace(/\?.*/, ''));
  check(hops.some((h) => h === `GET ${origin('authenticate', port)}/.postern/sign_in`), 'went through the authenticate host', hops);
  check(hops.some((h) => /^POST http:\/\/127\.0\.0\.1:\d+\/interaction\/[^/]+\/login$/.test(h)), 'posted the IdP login form', hops);
  check(hops.some((h) => h === `GET ${origin('authenticate', port)}/oauth2/callback`), 'came back through /oauth2/callback', hops);
  check(hops.some((h) => h === `GET ${origin('app', port)}/.postern/callback`), 'the app host took the session at /.postern/callback', hops);
  return { context, page, console: console_ };
}

/** Clicks #run-<name> and returns what #result-<name> shows. */
async function press(page, name) {
  const out = page.locator(`#result-${name}`);
  await page.click(`#run-${name}`);
  await page.waitForFunction((id) => document.getElementById(id)?.dataset.state === 'done', `result-${name}`, { timeout: 15_000 });
  const text = await out.textContent();
  const outcome = await out.getAttribute('data-outcome');
  const status = await out.getAttribute('data-status');
  let json = null;
  const nl = text.indexOf('\n');
  if (nl >= 0) {
    try { json = JSON.parse(text.slice(nl + 1)); } catch { json = null; }
  }
  return { text, outcome, status: status ? Number(status) : null, json };
}

/** Presses a button and checks the call came back 200 with the user, as the page and the API saw it. */
async function expectSuccess(page, port, name, { label, apiPath, preflight }) {
  const before = (await apiRequests()).length;
  const shown = await press(page, name);
  const fresh = (await apiRequests()).slice(before);
  const host = `${label}.${parent}:${port}`;
  check(shown.outcome === 'ok' && shown.status === 200, `${name}: the page shows 200 from ${host}`, shown.text);
  check(shown.json?.message === 'HELLO WORLD', `${name}: the page shows the API's HELLO WORLD`, shown.text);
  check(shown.json?.user?.email === email, `${name}: the API says the caller is ${email}`, shown.json);
  check(shown.json?.assertion_verified === true, `${name}: the API verified Postern's identity assertion`, shown.json);
  const posts = fresh.filter((r) => r.method === 'POST' && r.host === host);
  check(posts.length === 1, `${name}: the API answered exactly one POST for ${host}`, fresh);
  check(posts[0].path === apiPath && posts[0].status === 200 && posts[0].email === email && posts[0].assertion_verified,
    `${name}: the API answered POST ${apiPath} with 200 for ${email}`, posts[0]);
  check(posts[0].origin === origin('app', port), `${name}: the POST came from the app's origin`, posts[0]);
  const options = fresh.filter((r) => r.method === 'OPTIONS' && r.host === host);
  if (preflight === 'upstream') {
    check(options.length === 1 && options[0].status === 204 && options[0].email === null,
      `${name}: the preflight reached the API without a session (cors_allow_preflight) and got 204`, fresh);
  } else if (preflight === 'postern') {
    check(options.length === 0, `${name}: Postern answered the preflight itself (it never reached the API)`, fresh);
  }
  say(`  ok  ${name}: ${shown.status} ${shown.json.user.email} assertion_verified=${shown.json.assertion_verified}`);
  return shown;
}

/** Presses a button and checks Postern's 401 reached the page (the call was made without credentials). */
async function expectUnauthenticated(page, port, name, why) {
  const before = (await apiRequests()).length;
  const shown = await press(page, name);
  const fresh = (await apiRequests()).slice(before);
  check(shown.outcome === 'http-error' && shown.status === 401, `${name}: the page shows 401 (${why})`, shown.text);
  check(shown.json?.error === 'unauthenticated', `${name}: the 401 body is Postern's {"error":"unauthenticated"}`, shown.text);
  const posts = fresh.filter((r) => r.method === 'POST');
  check(posts.length === 0, `${name}: no POST reached the API`, fresh);
  say(`  ok  ${name}: 401 unauthenticated (${why})`);
  return shown;
}

/** A full-page screenshot in ARTIFACTS_DIR. */
async function screenshot(page, name) {
  fs.mkdirSync(artifacts, { recursive: true });
  const file = path.join(artifacts, name);
  await page.screenshot({ path: file, fullPage: true });
  shots.push(file);
}

async function sessionCookie(context) {
  const cookies = (await context.cookies()).filter((c) => c.name === '_postern');
  return cookies;
}

// ---------------------------------------------------------------------------
// phases

async function guide(browser, port) {
  const { context, page } = await signIn(browser, port);
  const cookies = await sessionCookie(context);
  check(cookies.length === 1 && cookies[0].domain === `app.${parent}` && cookies[0].httpOnly,
    'guide: the session cookie is host-only on app. and HttpOnly', cookies);
  check((await page.textContent('#cookie-visible')).startsWith('no'), 'guide: JavaScript cannot read the cookie');
  await expectUnauthenticated(page, port, 'problem', 'the browser does not send the cookie to api.');
  await expectUnauthenticated(page, port, 'header', 'HttpOnly: document.cookie is empty, so is the header');
  await expectUnauthenticated(page, port, 'shared-cookie', 'the cookie is app.\'s only, credentials: include sends nothing');
  await screenshot(page, 'cross-origin-guide.png');
  await context.close();
}

async function singleDomain(browser, port) {
  const { context, page } = await signIn(browser, port);
  await expectSuccess(page, port, 'single-domain', { label: 'app', apiPath: '/api' });
  await screenshot(page, 'cross-origin-single-domain.png');
  await context.close();
}

async function header(browser, port) {
  const { context, page } = await signIn(browser, port);
  const cookies = await sessionCookie(context);
  check(cookies.length === 1 && !cookies[0].httpOnly, 'header: the session cookie is readable (cookie_http_only: false)', cookies);
  await expectSuccess(page, port, 'header', { label: 'api', apiPath: '/', preflight: 'upstream' });
  await screenshot(page, 'cross-origin-header.png');
  await context.close();
}

async function sharedCookie(browser, port) {
  const { context, page } = await signIn(browser, port);
  const cookies = await sessionCookie(context);
  check(cookies.length === 1 && cookies[0].domain === `.${parent}`,
    `shared-cookie: the session cookie is for .${parent} (cookie_domain)`, cookies);
  await expectSuccess(page, port, 'shared-cookie', { label: 'api', apiPath: '/' });
  await screenshot(page, 'cross-origin-shared-cookie.png');
  await context.close();
}

async function demo(browser, port) {
  const { context, page } = await signIn(browser, port);
  const cookies = await sessionCookie(context);
  check(cookies.length === 1 && cookies[0].domain === `.${parent}` && !cookies[0].httpOnly,
    `demo: one session cookie, for .${parent}, readable by JavaScript`, cookies);
  await expectUnauthenticated(page, port, 'problem', 'no credentials: \'include\', so no cookie for api.');
  await expectSuccess(page, port, 'single-domain', { label: 'app', apiPath: '/api' });
  await expectSuccess(page, port, 'header', { label: 'api', apiPath: '/', preflight: 'upstream' });
  await expectSuccess(page, port, 'shared-cookie', { label: 'api', apiPath: '/' });
  await expectSuccess(page, port, 'cors-policy', { label: 'api2', apiPath: '/', preflight: 'postern' });
  await expectSuccess(page, port, 'cors-policy-cookie', { label: 'api2', apiPath: '/' });
  await screenshot(page, 'cross-origin.png');

  // The same SPA on an origin api2.'s policy does not allow (signed in
  // already: the cookie is for the whole parent domain).
  const other = await context.newPage();
  lastPage = other;
  const consoleLines = [];
  other.on('console', (m) => consoleLines.push(m.text()));
  await other.goto(`${origin('other', port)}/`);
  check(other.url() === `${origin('other', port)}/`, 'demo: other. opens signed in (shared cookie), no sign-in round trip', other.url());
  await other.waitForSelector('#run-cors-policy');
  const api2 = `api2.${parent}:${port}`;
  const otherOrigin = origin('other', port);

  let before = (await apiRequests()).length;
  let shown = await press(other, 'cors-policy');
  let fresh = (await apiRequests()).slice(before);
  check(shown.outcome === 'network-error' && /TypeError/.test(shown.text),
    'disallowed origin, header call: the page gets a network error (the browser blocked it)', shown.text);
  check(!shown.text.includes('HELLO WORLD') && !shown.text.includes(email), 'disallowed origin, header call: the API\'s answer is not readable', shown.text);
  check(fresh.filter((r) => r.host === api2).length === 0,
    'disallowed origin, header call: the preflight failed, so the POST never reached the API', fresh);
  say(`  ok  disallowed origin, header call: "${shown.text}", nothing reached the API`);

  before = (await apiRequests()).length;
  shown = await press(other, 'cors-policy-cookie');
  fresh = (await apiRequests()).slice(before);
  check(shown.outcome === 'network-error' && /TypeError/.test(shown.text),
    'disallowed origin, cookie call: the page gets a network error (the browser blocked it)', shown.text);
  check(!shown.text.includes('HELLO WORLD') && !shown.text.includes(email), 'disallowed origin, cookie call: the API\'s answer is not readable', shown.text);
  const posts = fresh.filter((r) => r.host === api2 && r.method === 'POST');
  check(posts.length === 1 && posts[0].origin === otherOrigin && posts[0].status === 200 && posts[0].email === email,
    'disallowed origin, cookie call: the simple POST did reach the API (200 for the user), yet the page could not read it', fresh);
  say(`  ok  disallowed origin, cookie call: "${shown.text}", the API answered 200 but the page could not read it`);

  // Chromium says why in the console (not to JavaScript).
  await other.waitForTimeout(200);
  const blocked = consoleLines.filter((l) => l.includes('blocked by CORS policy'));
  check(blocked.length >= 1, 'disallowed origin: the browser console reports the CORS block', consoleLines);
  say(`  ok  console: ${blocked[0]}`);
  await screenshot(other, 'cross-origin-other.png');
  await context.close();
}

const PHASES = [
  ['guide', guide],
  ['single-domain', singleDomain],
  ['header', header],
  ['shared-cookie', sharedCookie],
  ['demo', demo],
];

// ---------------------------------------------------------------------------

let browser;
let failed = false;
try {
  await apiRequests().catch((e) => {
    throw new CheckFailed(`the API's admin listener ${adminUrl} does not answer (${e.message}): is api-server.mjs running with ADMIN_PORT?`);
  });
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--ignore-certificate-errors',
    ],
  });
  say(`Chromium ${browser.version()} (${executablePath}); phases: ${Object.entries(ports).map(([k, v]) => `${k}@${v}`).join(', ')}`);
  for (const [name, run] of PHASES) {
    if (!(name in ports)) continue;
    const t = Date.now();
    say(`phase ${name} (https://app.${parent}:${ports[name]})`);
    await run(browser, ports[name]);
    say(`phase ${name} passed in ${((Date.now() - t) / 1000).toFixed(1)}s`);
  }
} catch (err) {
  failed = true;
  console.error(`FAILED: ${err instanceof CheckFailed ? err.message : err.stack}`);
  if (lastPage && !lastPage.isClosed()) {
    const shot = path.join(artifacts, 'cross-origin-failure.png');
    fs.mkdirSync(artifacts, { recursive: true });
    await lastPage.screenshot({ path: shot, fullPage: true }).then(() => console.error(`screenshot: ${shot} (${lastPage.url()})`), () => {});
  }
} finally {
  await browser?.close().catch(() => {});
  clearTimeout(watchdog);
}
if (failed) process.exit(1);
say(`PASSED: ${checks} checks; screenshots: ${shots.join(', ')}`);
