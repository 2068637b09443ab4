"""Peer and listener addresses as people read them, and as limits count them.

One home for what every front end logs, shows in the admin API and counts
connections by, so that the same peer looks the same everywhere.
"""

from __future__ import annotations

import os


def address_text(address) -> str:
    """``host:port`` for an IP address (``[host]:port`` for IPv6), the path
    of a Unix socket, ``local`` for an unnamed one."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)  # a Unix socket's path, often unnamed
    if name:
        return os.fsdecode(name)
    return "local" if address is None or hasattr(address, "name") else str(address)


def address_key(address) -> str:
    """What connections are counted by for ``--max-connections-per-address``:
    the host of an IP peer (any port), one key for every other peer."""
    host = getattr(address, "host", None)
    return str(host) if host is not None else "local"
