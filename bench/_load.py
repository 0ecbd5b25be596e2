"""Constant-arrival HTTP load that keeps every answer: the client of `bench/soak.py`, run as its own process.

    python bench/_load.py --port P --rate R --seconds S --start T --bodies users.json --out answers.jsonl

Request i is due at ``start + i / rate`` (Unix seconds) and leaves then, whatever happened to the earlier ones
(open loop, true constant arrival: no bursts, unlike a `hey` process firing all its workers at once). Requests go
over keep-alive HTTP/1.1 connections on loopback, opened as needed; an idle connection is reused (most recently
used first) and closed after 2 s idle, before the server's 5 s keep-alive would close it under us. A request whose
reused connection turns out closed before any answer byte is sent once more on a new connection (counted).
With ``--max-in-flight`` requests already waiting, a due request is not sent: it is recorded as ``missing``.

`hey` is not used because it keeps status codes and times only: the soak checks every answer's body.

One JSON line per due request, in order of completion:
``{"i", "due", "latency", "status", "user", "version", "probability", "features"}``, where ``latency`` counts
from the due time (a late send is the client's delay and is charged to the request), ``status`` is the HTTP
status or ``"missing"``, ``"error"`` (connection refused or reset), ``"timeout"``; ``features`` maps each feature
to ``[value, as_of]`` (200 only); non-200 answers keep the first 300 characters of their body as ``body``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

IDLE_LIMIT = 2.0  # seconds: uvicorn closes keep-alive connections idle for 5 s


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()
        self.used = False

    def close(self) -> None:
        self.writer.close()


class Client:
    def __init__(self, host: str, port: int, path: str, timeout: float):
        self.host, self.port, self.path, self.timeout = host, port, path, timeout
        self.idle: list[Connection] = []
        self.opened = 0
        self.resent = 0

    async def _connection(self) -> Connection:
        while self.idle:
            conn = self.idle.pop()
            if time.monotonic() - conn.idle_since < IDLE_LIMIT and not conn.reader.at_eof():
                return conn
            conn.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.opened += 1
        return Connection(reader, writer)

    async def _exchange(self, conn: Connection, payload: bytes) -> tuple[int, bytes, bool]:
        conn.writer.write(payload)
        head = await conn.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, keep = 0, True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        body = await conn.reader.readexactly(length)
        return status, body, keep

    async def post(self, body: bytes) -> tuple[int | str, bytes]:
        payload = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        for attempt in (0, 1):
            try:
                conn = await asyncio.wait_for(self._connection(), self.timeout)
            except TimeoutError:
                return "timeout", b""
            except OSError as exc:  # refused: the server is not listening
                return "error", str(exc).encode()[:300]
            reused = conn.used
            try:
                status, answer, keep = await asyncio.wait_for(self._exchange(conn, payload), self.timeout)
            except TimeoutError:
                conn.close()
                return "timeout", b""
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                conn.close()
                nothing_read = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                if attempt == 0 and reused and nothing_read:
                    self.resent += 1  # the server closed an idle connection as we wrote: a new one
                    continue
                return "error", str(exc).encode()[:300]
            conn.used = True
            if keep:
                conn.idle_since = time.monotonic()
                self.idle.append(conn)
            else:
                conn.close()
            return status, answer
        return "error", b"unreachable"


def record(i: int, due: float, user: str, status: int | str, answer: bytes) -> dict:
    out = {"i": i, "due": round(due, 6), "latency": round(time.time() - due, 6), "status": status, "user": user}
    if status == 200:
        body = json.loads(answer)
        out["version"] = body.get("model_version")
        out["probability"] = body.get("churn_probability")
        out["features"] = {k: [v.get("value"), v.get("as_of")] for k, v in (body.get("features") or {}).items()}
    elif answer:
        out["body"] = answer.decode(errors="replace")[:300]
    return out


async def run(args: argparse.Namespace) -> dict:
    users: list[str] = json.loads(Path(args.bodies).read_text())
    client = Client(args.host, args.port, args.path, args.timeout)
    total = int(args.rate * args.seconds)
    in_flight: set[asyncio.Task] = set()
    missing = 0
    with open(args.out, "w", buffering=1 << 20) as out:

        async def one(i: int, due: float, user: str) -> None:
            status, answer = await client.post(json.dumps({"user_id": user}).encode())
            try:
                line = record(i, due, user, status, answer)
            except (ValueError, AttributeError) as exc:  # a 200 whose body is not the documented JSON
                line = {"i": i, "due": due, "latency": time.time() - due, "status": "bad body", "user": user}
                line["body"] = f"{exc}: {answer[:200]!r}"
            out.write(json.dumps(line) + "\n")

        for i in range(total):
            due = args.start + i / args.rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            user = users[i % len(users)]
            if len(in_flight) >= args.max_in_flight:
                missing += 1
                out.write(json.dumps({"i": i, "due": due, "status": "missing", "user": user}) + "\n")
                continue
            task = asyncio.create_task(one(i, due, user))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(list(in_flight), timeout=args.timeout + 5)
    for conn in client.idle:
        conn.close()
    return {"due": total, "missing": missing, "connections_opened": client.opened, "resent": client.resent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--rate", type=float, required=True, help="Requests per second.")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--start", type=float, required=True, help="Unix time of the first request.")
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of user ids, sent in turn.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=10.0, help="Seconds before a request is a timeout.")
    parser.add_argument("--max-in-flight", type=int, default=256)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the soak client sends to loopback only")
    try:
        import uvloop  # optional: a cheaper event loop when installed (uvicorn's extra brings it)
    except ImportError:
        summary = asyncio.run(run(args))
    else:
        summary = uvloop.run(run(args))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
