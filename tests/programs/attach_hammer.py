"""Hammer one Balancer from threads for 3 s: one thread detaches and attaches
again to the cgroup argv[1] while two read the attachment's program ids, then
close() races with reads.  Prints what failed unexpectedly; exits 1 if anything did."""

from __future__ import annotations

import sys
import threading
import time

from socklb import Balancer, ClosedError
from socklb.datapath.live import PROGRAMS

cg = sys.argv[1]
lb = Balancer()
stop = time.monotonic() + 3
current = [lb.attach(cg)]
bad = []


def flip() -> None:
    while time.monotonic() < stop:
        current[0].detach()
        current[0] = lb.attach(cg)


def read() -> None:
    n = 0
    while time.monotonic() < stop:
        try:
            assert len(current[0].program_ids()) == len(PROGRAMS)
            n += 1
        except ClosedError:
            pass
        except Exception as e:
            bad.append(repr(e))
    print("reads", n)


ts = [threading.Thread(target=flip), threading.Thread(target=read), threading.Thread(target=read)]
for t in ts:
    t.start()
for t in ts:
    t.join()
closer = threading.Thread(target=lb.close)
closer.start()
for _ in range(1000):
    try:
        current[0].program_ids()
        lb.services()
        lb.counters()
    except ClosedError:
        pass
    except Exception as e:
        bad.append(repr(e))
closer.join()
print("bad", bad[:5], len(bad))
sys.exit(1 if bad else 0)
