"""argv[3] TCP connects to argv[1]:argv[2] (asking each for its peer line) and
argv[6] UDP datagrams to argv[4]:argv[5]; prints the pid and who served as
JSON."""

from __future__ import annotations

import json
import os
import socket
import sys

host, port, n, uhost = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
uport, n_udp = int(sys.argv[5]), int(sys.argv[6])
served = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.sendall(b"peer\n")
        served.append(s.recv(4096).decode().split()[0])
    except OSError as e:
        served.append("error:" + str(e.errno))
    finally:
        s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n_udp):
    u.sendto(b"x", (uhost, uport))
u.close()
print(json.dumps({"pid": os.getpid(), "served": served}))
