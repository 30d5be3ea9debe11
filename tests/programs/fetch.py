"""Connect to argv[1]:argv[2], send a line, print the whole answer on one line
(or the errno name if the connect fails)."""

from __future__ import annotations

import errno
import socket
import sys

try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
except OSError as e:
    print(errno.errorcode.get(e.errno or 0, e))
    sys.exit(0)
s.sendall(b"hi\n")
s.shutdown(socket.SHUT_WR)
d = b""
while x := s.recv(4096):
    d += x
print(d.decode().strip().replace(chr(10), " | "))
