"""Large responses through the NodePort, spliced inside the bluegreen Pods (proxy/splice.py).

What the Pod decides is what is checked here: the container's seccomp profile (RuntimeDefault)
and its user allow splice(2), on the Pod's veth behind kube-proxy's NAT, and the bodies arrive
byte for byte. A profile that refused it would make the proxy copy instead (and say so), which
the counter below would show as nothing spliced.
"""

from __future__ import annotations

import hashlib
import http.client

from tests.cluster.example import ADMIN_PORT, Example, pod_get
from tests.cluster.myapp.app import pattern
from tests.cluster.node import NODE_PORT
from tests.support.process import sample

SIZE = 8 * 1024 * 1024
# What may be copied rather than spliced per body: the read that carried the head (at most
# uvloop's 256,000 bytes).
COPIED_AT_MOST = 256_000


def spliced_bytes(example: Example) -> float:
    """bluegreen_spliced_response_bytes_total summed over the ready bluegreen Pods."""
    total = 0.0
    for ip in example.pods().values():
        status, text = pod_get(ip, ADMIN_PORT, "/metrics")
        assert status == 200, text[:200]
        total += sample(text, "bluegreen_spliced_response_bytes_total")
    return total


def test_large_bodies_through_the_nodeport_arrive_whole_and_are_spliced(
    example: Example,
) -> None:
    expected = hashlib.sha256(pattern(SIZE)).hexdigest()
    before = spliced_bytes(example)
    bodies = 0
    # Four on one kept-alive connection, four on fresh ones (kube-proxy may pick either Pod).
    keep_alive = http.client.HTTPConnection(example.cluster.node_address, NODE_PORT, timeout=30)
    try:
        for fresh in (False,) * 4 + (True,) * 4:
            connection = (
                http.client.HTTPConnection(example.cluster.node_address, NODE_PORT, timeout=30)
                if fresh
                else keep_alive
            )
            connection.request("GET", f"/bytes/{SIZE}")
            response = connection.getresponse()
            data = response.read()
            assert response.status == 200, data[:200]
            assert response.getheader("X-Bluegreen-Colour") in {"blue", "green"}
            assert len(data) == SIZE
            assert hashlib.sha256(data).hexdigest() == expected
            bodies += 1
            if fresh:
                connection.close()
    finally:
        keep_alive.close()
    spliced = spliced_bytes(example) - before
    print(f"{bodies} bodies of {SIZE} bytes; spliced in the Pods: {spliced:.0f} bytes")
    # A body is copied instead only when the client's socket still held bytes as its head went
    # out; most go through the pipe. None at all would mean the Pod refused splice(2).
    assert spliced >= (SIZE - COPIED_AT_MOST) * bodies / 2
