#!/usr/bin/env python3
"""Opens N HTTP/1.1 keep-alive connections, one request each, then holds them idle.

Used by benches/many_connections.sh. Standard library only (asyncio).

Each connection: connect (from a source address spread over 127.0.0.2.. so
ephemeral ports never run short), optionally TLS (SNI = --host), send
`GET / HTTP/1.1` with `Host: --host`, read the whole response (it must be
200 with a Content-Length body), then keep the socket open and idle. A reader
per connection notices if the peer closes it.

Output on stdout, one line each, flushed:
  opened N failed F in S s [reasons...]   once all attempts finished
  status open K closed_by_peer C          on SIGUSR1, and on exit
Exits on SIGTERM/SIGINT, or after --hold seconds.
Every wait is bounded (--connect-timeout per connection, --open-timeout for
the whole opening phase, --hold for the idle phase).
"""

import argparse
import asyncio
import collections
import signal
import socket
import ssl
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Holder:
    def __init__(self, args):
        self.args = args
        self.open = 0
        self.closed_by_peer = 0
        self.failed = collections.Counter()
        self.conns = []  # (reader, writer, watcher task): kept referenced
        self.ctx = None
        if args.tls:
            self.ctx = ssl.create_default_context()
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE

    def source(self, i):
        per = max(1, self.args.per_source)
        n = 2 + i // per
        if n > 254:
            raise RuntimeError("too many connections for 127.0.0.2-254 at --per-source")
        return "127.0.0.%d" % n

    async def one(self, i):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                # Choose the port at connect time (4-tuple unique), not at bind.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            except OSError:
                pass
            sock.bind((self.source(i), 0))
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, (self.args.connect, self.args.port))
            reader, writer = await asyncio.open_connection(
                sock=sock,
                ssl=self.ctx,
                server_hostname=self.args.host if self.ctx else None,
                limit=64 * 1024,
            )
        except BaseException:
            sock.close()
            raise
        try:
            writer.write(
                ("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: idle_conns\r\n\r\n" % self.args.host).encode()
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ", 2)
            if len(status) < 2 or status[1] != "200":
                raise RuntimeError("status " + lines[0][:40])
            length = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
                if name.strip().lower() == "connection" and "close" in value.lower():
                    raise RuntimeError("connection: close")
            if length is None:
                raise RuntimeError("no content-length")
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def watch(self, reader, writer):
        try:
            data = await reader.read(1)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            data = b""
        except asyncio.CancelledError:
            return
        # Anything arriving (or EOF) on an idle connection means it is gone.
        self.open -= 1
        self.closed_by_peer += 1
        writer.close()
        del data

    async def attempt(self, i, sem):
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(self.one(i), self.args.connect_timeout)
            except asyncio.TimeoutError:
                self.failed["timeout"] += 1
                return
            except (OSError, RuntimeError, ssl.SSLError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ValueError) as e:
                key = type(e).__name__
                if isinstance(e, OSError) and e.errno:
                    key += "(errno %d)" % e.errno
                elif isinstance(e, RuntimeError):
                    key = str(e)
                self.failed[key] += 1
                return
            self.open += 1
            task = asyncio.get_running_loop().create_task(self.watch(reader, writer))
            self.conns.append((reader, writer, task))

    def status(self):
        out("status open %d closed_by_peer %d" % (self.open, self.closed_by_peer))

    async def run(self):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self.status)

        t0 = time.monotonic()
        sem = asyncio.Semaphore(self.args.parallel)
        tasks = [loop.create_task(self.attempt(i, sem)) for i in range(self.args.n)]
        done, pending = await asyncio.wait(tasks, timeout=self.args.open_timeout)
        for t in pending:
            t.cancel()
        if pending:
            self.failed["open-timeout"] += len(pending)
            await asyncio.wait(pending, timeout=5)
        reasons = " ".join("%s=%d" % kv for kv in sorted(self.failed.items()))
        out("opened %d failed %d in %.1f s %s" % (
            self.open, sum(self.failed.values()), time.monotonic() - t0, reasons))
        del done

        try:
            await asyncio.wait_for(stop.wait(), self.args.hold)
        except asyncio.TimeoutError:
            pass
        self.status()
        for _, writer, task in self.conns:
            task.cancel()
            writer.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connect", default="127.0.0.1", help="address to connect to")
    p.add_argument("--host", default="bench.localhost", help="Host header and TLS SNI")
    p.add_argument("-n", type=int, default=10000, help="connections")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--parallel", type=int, default=200, help="connection attempts at once")
    p.add_argument("--per-source", type=int, default=2000, help="connections per source address")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--open-timeout", type=float, default=180.0)
    p.add_argument("--hold", type=float, default=1800.0, help="longest idle hold, seconds")
    args = p.parse_args()
    asyncio.run(Holder(args).run())


if __name__ == "__main__":
    main()
