"""CPU cost of reactorapp's per-message path, in process, without sockets.

The socket benchmarks (run.py) say how reactorapp compares with other
brokers; this says where a change to the codec, the hub or the protocol
moved the broker's own cost, in nanoseconds of CPU per message. It feeds
pre-encoded packets to ``MQTTProtocol.dataReceived`` in reads of about
64 KiB (what the reactor hands over) and counts CPU time, so it is steady
on a busy machine where wall-clock rates are not.

Transports are Twisted's own FileDescriptor write path with the socket
left out: the system calls are not in these numbers (run.py has them).

    python bench/hotpath.py                    # this checkout
    python bench/hotpath.py --tree /other/checkout
    python bench/hotpath.py --level 5          # every client speaks MQTT 5
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class _NoReactor:
    """What a FileDescriptor asks of its reactor, doing nothing."""

    def addWriter(self, writer) -> None:
        pass

    removeWriter = addReader = removeReader = addWriter

    def callLater(self, *args, **kwargs):
        raise AssertionError("not expected here")


def _transport_class():
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.address import IPv4Address

    class BufferTransport(FileDescriptor):
        """Twisted's own write path (buffering, producer checks, reactor
        registration); ``doWrite`` plays the reactor's write pass and the
        bytes go nowhere."""

        def __init__(self) -> None:
            super().__init__(reactor=_NoReactor())
            self.connected = 1
            self.written = 0

        def writeSomeData(self, data) -> int:
            self.written += len(data)
            return len(data)

        def getPeer(self):
            return IPv4Address("TCP", "127.0.0.1", 40000)

        def getHost(self):
            return IPv4Address("TCP", "127.0.0.1", 1883)

        def abortConnection(self) -> None:
            self.connected = 0

        def loseConnection(self, _reason=None) -> None:
            self.connected = 0

    return BufferTransport


def build(settings_kwargs=None):
    from twisted.internet.task import Clock

    from reactorapp.hub.hub import Hub
    from reactorapp.mqtt.protocol import MQTTFactory

    clock = Clock()
    hub = Hub(clock)
    factory = MQTTFactory(hub, clock)
    return hub, factory


#: Protocol level of every client: 4 (MQTT 3.1.1) or 5 (--level).
LEVEL = 4


def connect(factory, client_id: str, subscribe: str | None = None, qos: int = 0):
    sys.path.insert(0, str(HERE))
    import loadgen

    protocol = factory.buildProtocol(None)
    transport = _transport_class()()
    protocol.makeConnection(transport)
    if LEVEL == 5:
        from reactorapp.mqtt import packets as P
        from reactorapp.mqtt.codec import encode

        protocol.dataReceived(encode(P.Connect(client_id, protocol_level=5), 5))
        if subscribe:
            protocol.dataReceived(encode(P.Subscribe(1, [P.SubscriptionRequest(subscribe, qos)]), 5))
        return protocol, transport
    protocol.dataReceived(loadgen.encode_connect(client_id, keep_alive=0))
    if subscribe:
        protocol.dataReceived(loadgen.encode_subscribe(1, subscribe, qos))
    return protocol, transport


def publish_ring(topic: str, qos: int) -> tuple[bytes, int]:
    """`loadgen.publish_ring`, at level 5: each PUBLISH has an empty
    property block between its packet id and its payload."""
    sys.path.insert(0, str(HERE))
    import loadgen

    if LEVEL != 5:
        return loadgen.publish_ring(topic, qos)
    from reactorapp.mqtt import packets as P
    from reactorapp.mqtt.codec import encode

    one = encode(P.Publish(topic, b"x" * loadgen.PAYLOAD_SIZE, qos,
                           packet_id=1 if qos else None), 5)
    size = len(one)
    ring = bytearray(one * loadgen.RING)
    seq_at = size - loadgen.PAYLOAD_SIZE
    for shift, offset in ((24, 0), (16, 1), (8, 2), (0, 3)):
        ring[seq_at + offset::size] = bytes(i >> shift & 0xFF for i in range(loadgen.RING))
    if qos:
        ids = range(1, loadgen.RING + 1)
        ring[seq_at - 3::size] = bytes(i >> 8 for i in ids)
        ring[seq_at - 2::size] = bytes(i & 0xFF for i in ids)
    return bytes(ring), size


def scenario(name: str, messages: int) -> float:
    """CPU nanoseconds per delivered message for one scenario."""
    sys.path.insert(0, str(HERE))
    import loadgen

    hub, factory = build()
    if name == "fanin":
        subs = [connect(factory, "sub", "bench/fanin/+", 0)]
        pubs = [connect(factory, f"pub{i}") for i in range(4)]
        topics = [f"bench/fanin/{i}" for i in range(4)]
        qos = 0
    elif name == "fanout":
        subs = [connect(factory, f"sub{i}", "bench/fanout/0", 0) for i in range(16)]
        pubs = [connect(factory, "pub0")]
        topics = ["bench/fanout/0"]
        qos = 0
    elif name == "qos1":
        subs = [connect(factory, "sub", "bench/qos1/+", 1)]
        pubs = [connect(factory, f"pub{i}") for i in range(4)]
        topics = [f"bench/qos1/{i}" for i in range(4)]
        qos = 1
    else:
        raise ValueError(name)
    rings = [publish_ring(topic, qos) for topic in topics]
    per_read = 65536 // rings[0][1]
    reads = []
    for ring, size in rings:
        chunks = [ring[i * size:(i + per_read) * size] for i in range(0, loadgen.RING - per_read, per_read)]
        reads.append(chunks)
    sub_protocol = subs[0][0]
    # QoS 1: the subscriber acknowledges everything in flight after each read.
    acks = []
    if qos:
        session = sub_protocol.session

        def ack_all() -> None:
            # Acknowledge the window until the session has nothing left.
            while session.inflight:
                sub_protocol.dataReceived(b"".join(
                    b"\x40\x02" + pid.to_bytes(2, "big") for pid in list(session.inflight)))
        acks.append(ack_all)
    delivered = 0
    gc.collect()
    started = time.process_time()
    sent = 0
    i = 0
    transports = [t for _, t in subs + pubs]
    while sent < messages:
        for (protocol, _), chunks in zip(pubs, reads):
            protocol.dataReceived(chunks[i % len(chunks)])
            sent += per_read
            for ack in acks:
                ack()
            for transport in transports:  # the reactor's write pass
                if transport.dataBuffer or transport._tempDataBuffer:
                    transport.doWrite()
        i += 1
    elapsed = time.process_time() - started
    delivered = sent * len(subs)
    return elapsed / delivered * 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=HERE.parent, help="checkout to measure")
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--scenarios", default="fanin,fanout,qos1")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    parser.add_argument("--level", type=int, choices=(4, 5), default=4,
                        help="protocol level of every client: 4 (MQTT 3.1.1) or 5")
    args = parser.parse_args(argv)
    global LEVEL
    LEVEL = args.level
    sys.path.insert(0, str(args.tree.resolve()))
    for name in args.scenarios.split(","):
        best = min(scenario(name, args.messages) for _ in range(args.repeat))
        print(f"{name:<7} {best:7.0f} ns CPU per delivered message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
