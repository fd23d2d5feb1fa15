"""Bring the loopback interface up without extra packages (the image has no iproute2).

An enclave boots with ``lo`` down; workerd listens on 127.0.0.1, so it must be up. This is what
``ip link set lo up`` does: read the interface flags (SIOCGIFFLAGS) and set IFF_UP (SIOCSIFFLAGS).
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sH22x"  # struct ifreq: name[16], short flags, padding to 40 bytes


def loopback_up(name: bytes = b"lo") -> bool:
    """Set IFF_UP on ``name``; returns whether it was down before."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _, flags = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, name, 0)))
        if flags & IFF_UP:
            return False
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, name, flags | IFF_UP))
        return True


if __name__ == "__main__":
    print("loopback: brought up" if loopback_up() else "loopback: already up")
