"""argv[2] UDP sockets to argv[1]:53, each closed at once: one in ten sends a
datagram, the others only connect.  Prints how many were made."""

from __future__ import annotations

import socket
import sys
import time

vip, n = sys.argv[1], int(sys.argv[2])
end = time.monotonic() + 240
done = 0
for i in range(n):
    if time.monotonic() > end:
        break
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if i % 10 == 0:
        s.sendto(b"x", (vip, 53))  # sendmsg path
    else:
        s.connect((vip, 53))  # connect path: no packet at all
    s.close()
    done += 1
print(done)
