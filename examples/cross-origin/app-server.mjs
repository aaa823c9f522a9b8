// The cross-origin guide's web application (its app.go: a static file
// server), in Node: serves app/index.html and app/index.mjs.
//
// Environment:
//   PORT               listen port (default 8101; 0 = any)
//   LISTEN_HOST        listen address (default 127.0.0.1)
//   EXIT_ON_STDIN_EOF  1: exit when stdin closes (test harnesses)
// Stdout gets one JSON line once listening: {"app":"http://LISTEN_HOST:PORT"}

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'app');
const port = Number.parseInt(process.env.PORT ?? '8101', 10);
const host = process.env.LISTEN_HOST || '127.0.0.1';
const FILES = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/index.mjs': ['index.mjs', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
};

const server = http.createServer((req, res) => {
  req.resume();
  const file = FILES[new URL(req.url, 'http://app').pathname];
  if (!file || (req.method !== 'GET' && req.method !== 'HEAD')) {
    res.writeHead(file ? 405 : 404, { 'content-type': 'text/plain' });
    res.end(file ? 'method not allowed\n' : 'not found\n');
    return;
  }
  const body = fs.readFileSync(path.join(dir, file[0]));
  res.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-cache' });
  res.end(req.method === 'HEAD' ? undefined : body);
});

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, host, resolve);
});
process.stdout.write(`${JSON.stringify({ app: `http://${host}:${server.address().port}` })}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
if (process.env.EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
