"""ICMP echo over a raw socket to argv[1], for machines without the ping binary."""

from __future__ import annotations

# ICMP echo over a raw socket, for machines without the ping binary.
import os
import socket
import struct
import sys
import time

host = sys.argv[1]
v6 = ":" in host
if v6:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    req, rep = 128, 129
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    req, rep = 8, 0
ident = os.getpid() & 0xFFFF
body = struct.pack("!HH", ident, 1) + b"socklb-lab"


def csum(b: bytes) -> int:
    b += b"\0" * (len(b) & 1)
    t: int = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    t += t >> 16
    return ~t & 0xFFFF


pkt = struct.pack("!BBH", req, 0, 0) + body
if not v6:  # the kernel fills in the ICMPv6 checksum
    pkt = struct.pack("!BBH", req, 0, csum(pkt)) + body
s.sendto(pkt, (host, 0))
deadline = time.monotonic() + 2
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        sys.exit("no echo reply from " + host)
    s.settimeout(left)
    data, _ = s.recvfrom(4096)
    if not v6:
        data = data[(data[0] & 0x0F) * 4 :]
    if data[0] == rep and struct.unpack("!H", data[4:6])[0] == ident:
        print("reply from", host)
        break
