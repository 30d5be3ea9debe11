"""Non-blocking TCP connects to argv[1]:80, closed at once, argv[2] of them
within argv[3] seconds; prints how many were made."""

from __future__ import annotations

import errno
import socket
import sys
import time

vip, n, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + budget
done = 0
while done < n and time.monotonic() < end:
    for _ in range(1000):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((vip, 80))  # translated at once; the SYN goes to a closed port
        s.close()
        if rc not in (0, errno.EINPROGRESS, errno.ECONNREFUSED):
            sys.exit(f"connect: {errno.errorcode.get(rc, rc)}")
    done += 1000
print(done)
