"""uvicorn's command line, with TCP_NODELAY set on the socket it binds: a diagnostic.

    python -m bench.nodelay --factory bench.apps:http_bare --workers 2 ...

With `--workers N` (N > 1) uvicorn binds the listening socket itself
(`Config.bind_socket`, `socket.socket(family=AF_INET)`: protocol 0, no TCP_NODELAY) and
hands it to its worker processes. asyncio turns TCP_NODELAY on for an accepted socket
only when the socket says its protocol is IPPROTO_TCP; accepted from this listener it
says 0, so Nagle's algorithm stays on for every connection. This module sets
TCP_NODELAY on the bound socket (accepted sockets inherit it on Linux, as they do from
gunicorn's listener, which sets it) and changes nothing else: bench/http.py's part
`workers` runs it beside plain `uvicorn --workers 2` to show whether that is the cause.
"""

from __future__ import annotations

import socket
import sys

import uvicorn.config
from uvicorn.main import main

_bind_socket = uvicorn.config.Config.bind_socket


def bind_socket(self: uvicorn.config.Config) -> socket.socket:
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


uvicorn.config.Config.bind_socket = bind_socket  # type: ignore[method-assign]

if __name__ == "__main__":  # the workers, started by spawn, import this module again
    sys.exit(main())
