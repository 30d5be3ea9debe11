"""Make a TCP socket, print "made"; on a line on stdin connect it to
argv[1]:80 and print its peer; wait for another line."""

from __future__ import annotations

import socket
import sys

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
print("made", flush=True)
sys.stdin.readline()
s.connect((sys.argv[1], 80))
peer = s.getpeername()
print(f"{peer[0]}:{peer[1]}", flush=True)
sys.stdin.readline()
