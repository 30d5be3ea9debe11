"""Make a lab with two pods and a server, print its id, then sleep: the test
SIGKILLs it to leave leftovers behind."""

from __future__ import annotations

import time

from socklb.testing.lab import Lab

lab = Lab()
a = lab.add_pod("a")
lab.add_pod("b")
a.serve(tcp=[80])
print(lab.id, flush=True)
time.sleep(60)
