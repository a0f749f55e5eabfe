"""A small HTTP/1.1 load generator, used by bench/http.py when `wrk` is not installed.

    python -m bench.loadgen http://127.0.0.1:8000/bench --keys FILE -d 10 -c 32

One process, one asyncio loop, `-c` keep-alive connections each sending one request at a
time (closed loop, like wrk), rotating through the keys of FILE in `X-API-Key`. Prints
the same `BENCHJSON {...}` line as bench/keys.lua. Being Python, it needs far more CPU
per request than wrk: on a small machine it competes with the server for cores, so its
numbers are lower than wrk's; compare variants with each other, not with wrk runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit


async def _connection(
    host: str, port: int, requests: list[bytes], offset: int, until: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = offset
    latencies: list[float] = out["latencies"]
    try:
        while True:
            started = time.perf_counter()
            if started >= until:
                break
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                out["non2xx"] += 1
    except (OSError, asyncio.IncompleteReadError):
        out["read_errors"] += 1
    finally:
        writer.close()


async def load(url: str, keys: list[str], duration: float, connections: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {k}\r\n\r\n".encode()
        for k in keys
    ]
    out: dict[str, Any] = {"latencies": [], "non2xx": 0, "read_errors": 0}
    started = time.perf_counter()
    until = started + duration
    step = max(1, len(requests) // connections)
    await asyncio.gather(
        *(_connection(host, port, requests, c * step, until, out) for c in range(connections))
    )
    elapsed = time.perf_counter() - started
    lat = sorted(out["latencies"])

    def pct(p: float) -> int:
        return int(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6) if lat else 0

    return {
        "requests": len(lat),
        "duration_us": int(elapsed * 1e6),
        "rps": len(lat) / elapsed,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": int(lat[-1] * 1e6) if lat else 0,
        "mean_us": sum(lat) / len(lat) * 1e6 if lat else 0.0,
        "connect_errors": 0,
        "read_errors": out["read_errors"],
        "write_errors": 0,
        "timeouts": 0,
        "non2xx": out["non2xx"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--keys", required=True, help="file of API keys, one a line")
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("-c", "--connections", type=int, default=32)
    args = parser.parse_args()
    with open(args.keys) as f:
        keys = [line.strip() for line in f if line.strip()]
    result = asyncio.run(load(args.url, keys, args.duration, args.connections))
    print("BENCHJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
