// The cross-origin guide's JavaScript, one function per approach. Each
// snippet is the guide's as written, with two changes only: the URL names
// this demo's hosts (the guide's api.localhost.pomerium.io is
// api.${parent}, e.g. api.cors.localhost:8443), and the snippet returns
// what it got so the page can show it (the guide only logs it).

// This page's parent domain and port: app.cors.localhost:8443 -> cors.localhost:8443.
const parent = location.host.slice(location.host.indexOf('.') + 1);

const approaches = {
  // "Problem": the guide's first index.mjs.
  problem: async () => {
    const result = await fetch(`https://api.${parent}`, {
      method: 'POST',
      headers: {
        Accept: 'application/json',
      },
    });
    const json = await result.json();
    console.log('RESULT', json);
    return { result, json };
  },

  // "Use a Single Domain".
  'single-domain': async () => {
    const result = await fetch(location.origin + '/api', {
      method: 'POST',
      headers: {
        Accept: 'application/json',
      },
    });
    const json = await result.json();
    console.log('RESULT', json);
    return { result, json };
  },

  // "Pass the Pomerium Credentials via a Header".
  header: async () => {
    const result = await fetch(`https://api.${parent}`, {
      method: 'POST',
      headers: {
        Accept: 'application/json',
        'X-Pomerium-Authorization': document.cookie.substring(
          document.cookie.indexOf('=') + 1,
        ),
      },
    });
    const json = await result.json();
    console.log('RESULT', json);
    return { result, json };
  },

  // "Share the Cookie".
  'shared-cookie': async () => {
    const result = await fetch(`https://api.${parent}`, {
      method: 'POST',
      headers: {
        Accept: 'application/json',
      },
      credentials: 'include',
    });
    const json = await result.json();
    console.log('RESULT', json);
    return { result, json };
  },

  // The header snippet against api2., whose CORS is Postern's `cors:` policy.
  'cors-policy': async () => {
    const result = await fetch(`https://api2.${parent}`, {
      method: 'POST',
      headers: {
        Accept: 'application/json',
        'X-Pomerium-Authorization': document.cookie.substring(
          document.cookie.indexOf('=') + 1,
        ),
      },
    });
    const json = await result.json();
    console.log('RESULT', json);
    return { result, json };
  },

  // The shared-cookie snippet against api2.
  'cors-policy-cookie': async () => {
    const result = await fetch(`https://api2.${parent}`, {
      method: 'POST',
      headers: {
        Accept: 'application/json',
      },
      credentials: 'include',
    });
    const json = await result.json();
    console.log('RESULT', json);
    return { result, json };
  },
};

// ---------------------------------------------------------------------------
// the page

// Shows an outcome in #result-<name>: data-state (idle, running, done),
// data-outcome (ok, http-error, network-error), data-status (HTTP status).
async function run(name) {
  const out = document.getElementById(`result-${name}`);
  out.dataset.state = 'running';
  out.dataset.outcome = '';
  out.dataset.status = '';
  out.textContent = 'running…';
  try {
    const { result, json } = await approaches[name]();
    out.dataset.status = String(result.status);
    out.dataset.outcome = result.ok ? 'ok' : 'http-error';
    out.textContent = `${result.status} ${result.statusText}\n${JSON.stringify(json, null, 2)}`;
  } catch (err) {
    // A CORS failure reaches JavaScript only as "TypeError: Failed to
    // fetch"; the reason is in the browser's console.
    out.dataset.outcome = 'network-error';
    out.textContent = `${err.name}: ${err.message}`;
  }
  out.dataset.state = 'done';
}

document.getElementById('origin').textContent = location.origin;
const visible = document.cookie.includes('=');
document.getElementById('cookie-visible').textContent = visible ? 'yes' : 'no (HttpOnly)';
if (!location.hostname.startsWith('app.')) {
  const note = document.getElementById('origin-note');
  note.hidden = false;
  note.textContent = `This copy of the page is on ${location.origin}, which api2.'s cors policy does not `
    + 'allow: the browser must block its calls to api2. (the API may still answer; the page cannot read it).';
}
for (const button of document.querySelectorAll('button[data-approach]')) {
  button.addEventListener('click', () => run(button.dataset.approach));
}
document.getElementById('run-all').addEventListener('click', async () => {
  for (const name of Object.keys(approaches)) await run(name);
});
