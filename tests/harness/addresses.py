"""Loopback addresses for test nodes: every node binds the product's real port numbers on
its own 127.x.y.z (127.0.0.0/8 is all local on Linux), so several nodes, tests and test
runs share one machine."""

from __future__ import annotations

import random
import socket

from agent.ports import FIXED_PORTS

# Every port a node binds: the public ports' defaults and the fixed ones.
NODE_PORTS = (8080, 8081, *sorted(FIXED_PORTS))


def _ip_is_free(ip: str) -> bool:
    for port in NODE_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def allocate_loopback_ip() -> str:
    """A 127.x.y.z address whose node ports are all free."""
    rng = random.Random()
    for _ in range(200):
        ip = f"127.{rng.randint(20, 250)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        if _ip_is_free(ip):
            return ip
    raise RuntimeError("no free loopback address found")
