"""A free local TCP port: the ``MASTER_PORT`` of a process group started from this process."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS has just handed out on 127.0.0.1 (released again, so a race stays possible but rare)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
