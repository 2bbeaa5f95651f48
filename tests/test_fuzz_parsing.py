"""A bounded fuzz run of request parsing, over real sockets.

Seed requests (valid ones, pipelined ones, and the smuggling attempts of test_strict_parsing) are
mutated byte by byte by hypothesis and sent to a real proxy. Whatever happens, the proxy must
answer with HTTP/1.1 or close, stay up, and forward to the upstream only well-formed requests:
every upstream connection's bytes are parsed by h11, an independent parser, and any protocol
error there is a failure. The budget is BLUEGREEN_FUZZ_EXAMPLES examples (default 300), so CI
time stays bounded; raise it for a longer local run.
"""

from __future__ import annotations

import asyncio
import os

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.metrics import TrafficStats
from proxy.routing import RoutingTable, Upstream
from proxy.server import ProxyServer
from tests.test_strict_parsing import SMUGGLING

EXAMPLES = int(os.environ.get("BLUEGREEN_FUZZ_EXAMPLES", "300"))

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"
    b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n0\r\nTrailer: t\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HEAD / HTTP/1.0\r\nHost: a\r\n\r\n",
    *SMUGGLING,
]
INTERESTING = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b"\x00", b"0", b"a", b"-", b"\x7f"]

mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "duplicate"]),
    st.floats(0, 1, exclude_max=True),
    st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=3),
)


def mutate(seed: bytes, mutations: list[tuple[str, float, bytes]]) -> bytes:
    data = bytearray(seed)
    for operation, where, piece in mutations:
        if not data:
            data += piece
            continue
        at = int(where * len(data))
        if operation == "insert":
            data[at:at] = piece
        elif operation == "delete":
            del data[at : at + len(piece)]
        elif operation == "replace":
            data[at : at + len(piece)] = piece
        else:  # duplicate the line around `at`, a classic for repeated fields
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end + 1
            data[end:end] = data[start:end]
    return bytes(data)


class CheckingUpstream:
    """Parses each connection with h11, answers every complete request, records errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = h11.Connection(h11.SERVER)
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    parser.receive_data(data)
                    if not data:
                        break
                elif isinstance(event, h11.EndOfMessage):
                    self.requests += 1
                    writer.write(
                        parser.send(
                            h11.Response(
                                status_code=200, reason=b"OK", headers=[("Content-Length", "2")]
                            )
                        )
                        or b""
                    )
                    writer.write(parser.send(h11.Data(data=b"ok")) or b"")
                    writer.write(parser.send(h11.EndOfMessage()) or b"")
                    parser.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except h11.RemoteProtocolError as error:
            # A request cut short by the proxy (the client's was bad further on) ends in an
            # incomplete message, which h11 reports at EOF: that is the safe outcome.
            if "incomplete" not in str(error).lower():
                self.errors.append(repr(error))
        except (ConnectionError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            return  # asyncio.run ends the loop with this connection still open: not a failure
        finally:
            writer.close()


async def exchange_once(payload: bytes) -> tuple[bytes, CheckingUpstream, bytes]:
    upstream = CheckingUpstream()
    raw = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = int(raw.sockets[0].getsockname()[1])
    ups = {c: Upstream(c, f"http://127.0.0.1:{port}", "127.0.0.1", port) for c in ("blue", "green")}
    server = ProxyServer(TrafficStats(), RoutingTable("v", "blue", "green", ups))
    listener = await server.listen("127.0.0.1", 0)
    proxy_port = int(listener.sockets[0].getsockname()[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(payload)
        writer.write_eof()
        answer = b""
        try:
            async with asyncio.timeout(2):
                while data := await reader.read(65536):
                    answer += data
        except (TimeoutError, ConnectionError):
            pass  # an upgrade or a body still waiting: the proxy is right to wait
        writer.close()
        # The proxy is still up and serves a fresh, valid request.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(b"GET /alive HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        alive = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    finally:
        await server.shutdown(0.2)
        raw.close()
    return answer, upstream, alive


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_requests_never_reach_the_upstream_malformed(
    seed: bytes, mutations: list[tuple[str, float, bytes]]
) -> None:
    payload = mutate(seed, mutations)
    answer, upstream, alive = asyncio.run(exchange_once(payload))
    assert upstream.errors == [], (payload, upstream.errors)
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), (payload, answer[:100])
        status = int(answer[9:12])
        # 501: a transfer coding other than chunked (RFC 9112 6.1); 505: a version that is not
        # HTTP/1.x (proxy/headers.py).
        assert status in {101, 200, 400, 413, 414, 431, 501, 502, 503, 505}, (payload, answer[:100])
    assert alive.startswith(b"HTTP/1.1 200 OK"), (payload, alive[:100])
