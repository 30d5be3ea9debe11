"""20 DNS queries (whoami.lab TXT) to argv[1]:53 through asyncio datagram
endpoints without remote_addr: the reply's address, port, text and whether
its id matches, as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, List, Tuple

VIP = sys.argv[1]


def query(qid: int) -> bytes:
    # A DNS query for whoami.lab TXT.
    name = b"".join(bytes([len(p)]) + p for p in (b"whoami", b"lab")) + b"\0"
    return qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x10\x00\x01"


class Proto(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Future[Tuple[bytes, Any]] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.got.done():
            self.got.set_result((data, addr))


async def main() -> None:
    loop = asyncio.get_running_loop()
    out: List[List[Any]] = []
    for i in range(20):
        # Unconnected: no remote_addr; the reply's address comes from recvfrom.
        tr, pr = await loop.create_datagram_endpoint(Proto, family=2, local_addr=("0.0.0.0", 0))
        tr.sendto(query(i), (VIP, 53))
        data, addr = await asyncio.wait_for(pr.got, 3)
        # The answer's TXT rdata ends the message: a length byte, then the text.
        txt = next((data[-n:].decode() for n in range(1, 40) if data[-n - 1] == n), "")
        out.append([addr[0], addr[1], txt, int.from_bytes(data[:2], "big") == i])
        tr.close()
    print(json.dumps(out))


asyncio.run(main())
