"""MQTT 5 decoding and encoding: reactorapp's codec beside the `mqtt5` package.

`mqtt5` (PyPI, Rust, sans-I/O) is the maintained library the codec could be
swapped for; this measures both on the broker's hot path and checks both
against the malformed packets our codec refuses, so the choice rests on
speed and strictness together. (`mqttproto`, the pure-Python candidate, has
no release on the package index this project installs from.)

Speed: CPU nanoseconds per packet (process time, best of interleaved
rounds), decoding a read of 1,000 packets and encoding one packet at a time:

- decode: our ``Parser.feed`` at level 5; ``mqtt5.read`` in a loop over the
  same buffer; and ``mqtt5.read`` plus turning its object into our packet
  value, which is what the broker would have to do to use it. Our 3.1.1
  figure for the same packet without properties is beside them;
- encode: ``encode(packet, 5)``; for PUBLISH also the fan-out path
  (``encode_publish5`` with the shared properties encoded once and a
  Subscription Identifier added per subscriber); ``mqtt5``'s
  ``Packet(...).write()`` (building the object included, as the broker
  would have to).

Strictness: each malformed packet, the reason code our codec refuses it
with, and whether ``mqtt5.read`` refuses it.

    pip install mqtt5               # or: pip install -e '.[bench]'
    python bench/bench_codec5.py            # about 20 s on a quiet machine
    python bench/bench_codec5.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reactorapp.mqtt.codec import (  # noqa: E402
    Parser,
    ProtocolError,
    encode,
    encode_publish,
    encode_publish5,
    property_bytes,
)
from reactorapp.mqtt.packets import (  # noqa: E402
    Connect,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    SubscriptionRequest,
    Will,
)

try:
    import mqtt5
except ImportError:  # the comparison is optional; our figures still print
    mqtt5 = None

PAYLOAD = b"x" * 64
PUBLISH_PROPERTIES = {"message_expiry_interval": 60, "content_type": "application/json",
                      "user_property": [("trace", "4bf92f3577b34da6")]}

PACKETS = {
    "PUBLISH qos1 +3 props": Publish("sensors/42/temp", PAYLOAD, 1, packet_id=7,
                                     properties=PUBLISH_PROPERTIES),
    "PUBLISH qos0": Publish("sensors/42/temp", PAYLOAD),
    "SUBSCRIBE 2 filters": Subscribe(9, [SubscriptionRequest("sensors/+/temp", 1),
                                         SubscriptionRequest("alerts/#", 2, True, False, 1)],
                                     {"subscription_identifier": 12}),
    "CONNECT props+will": Connect(
        "device-42", True, 60, Will("devices/42/status", b"offline", 1, True,
                                    {"will_delay_interval": 5}),
        "user", b"secret", protocol_level=5,
        properties={"session_expiry_interval": 3600, "receive_maximum": 100,
                    "topic_alias_maximum": 10}),
    "PUBACK 0x10": PubAck(7, 0x10),
}
#: What our 3.1.1 codec decodes beside each (the same packet without what
#: 3.1.1 cannot carry).
OLD = {
    "PUBLISH qos1 +3 props": Publish("sensors/42/temp", PAYLOAD, 1, packet_id=7),
    "PUBLISH qos0": Publish("sensors/42/temp", PAYLOAD),
    "SUBSCRIBE 2 filters": Subscribe(9, [SubscriptionRequest("sensors/+/temp", 1),
                                         SubscriptionRequest("alerts/#", 2)]),
    "CONNECT props+will": Connect("device-42", True, 60,
                                  Will("devices/42/status", b"offline", 1, True),
                                  "user", b"secret"),
    "PUBACK 0x10": PubAck(7),
}


# -- mqtt5 objects, and turning them into ours ----------------------------------------

def _lib_packet(name: str):
    """The same packet as an mqtt5 object."""
    m = mqtt5
    if name.startswith("PUBLISH qos1"):
        return m.PublishPacket("sensors/42/temp", PAYLOAD, qos=m.QoS.AT_LEAST_ONCE, packet_id=7,
                               message_expiry_interval=60, content_type="application/json",
                               user_properties=[("trace", "4bf92f3577b34da6")])
    if name.startswith("PUBLISH qos0"):
        return m.PublishPacket("sensors/42/temp", PAYLOAD)
    if name.startswith("SUBSCRIBE"):
        return m.SubscribePacket(9, [
            m.TopicFilter("sensors/+/temp", max_qos=m.QoS.AT_LEAST_ONCE,
                          retain_as_published=False),
            m.TopicFilter("alerts/#", max_qos=m.QoS.EXACTLY_ONCE, no_local=True,
                          retain_as_published=False,
                          retain_handling=m.RetainHandling.SEND_IF_SUBSCRIPTION_NOT_EXISTS)],
            subscription_id=12)
    if name.startswith("CONNECT"):
        return m.ConnectPacket(
            "device-42", username="user", password=b"secret", clean_start=True, keep_alive=60,
            will=m.Will("devices/42/status", payload=b"offline", qos=m.QoS.AT_LEAST_ONCE,
                        retain=True, will_delay_interval=5),
            session_expiry_interval=3600, receive_max=100, topic_alias_max=10)
    return m.PubAckPacket(7, reason_code=m.PubAckReasonCode.NO_MATCHING_SUBSCRIBERS)


_PUBLISH_FIELDS = ("payload_format_indicator", "message_expiry_interval", "content_type",
                   "response_topic", "correlation_data", "topic_alias")


def _to_ours(p):
    """An mqtt5 PUBLISH as our packet value: what using the library costs the broker."""
    properties = {}
    for field in _PUBLISH_FIELDS:
        value = getattr(p, field)
        if value:
            properties[field] = value
    if p.subscription_ids:
        properties["subscription_identifier"] = list(p.subscription_ids)
    if p.user_properties:
        properties["user_property"] = list(p.user_properties)
    return Publish(p.topic, p.payload, int(p.qos), p.retain, p.duplicate, p.packet_id,
                   properties)


def _lib_read_all(buf: bytes) -> list:
    read = mqtt5.read
    view = memoryview(buf)
    pos, n, out = 0, len(buf), []
    while pos < n:
        packet, size = read(view[pos:])
        out.append(packet)
        pos += size
    return out


# -- timing ------------------------------------------------------------------------------

def _cpu_ns(fn, count: int, per_call: int) -> float:
    """CPU time per packet; the garbage collector is held off, so one
    column does not pay for another's garbage."""
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        for _ in range(count):
            fn()
        return (time.process_time() - started) / (count * per_call) * 1e9
    finally:
        gc.enable()


def measure(rounds: int, packets_per_read: int, encodes: int) -> list[tuple]:
    """Rows of (operation, packet, ours-5, ours-fast, 3.1.1, mqtt5, mqtt5+convert), in ns."""
    jobs = {}
    for name, packet in PACKETS.items():
        buf5 = encode(packet, 5) * packets_per_read
        buf4 = encode(OLD[name]) * packets_per_read
        row = {
            "ours": lambda b=buf5: Parser(protocol_level=5).feed(b),
            "3.1.1": lambda b=buf4: Parser().feed(b),
        }
        if mqtt5 is not None:
            row["mqtt5"] = lambda b=buf5: _lib_read_all(b)
            if isinstance(packet, Publish):
                row["mqtt5+convert"] = lambda b=buf5: [_to_ours(p) for p in _lib_read_all(b)]
        jobs[("decode", name)] = (row, packets_per_read)

        row = {"ours": lambda p=packet: encode(p, 5),
               "3.1.1": lambda p=OLD[name]: encode(p)}
        if isinstance(packet, Publish):
            shared = property_bytes(packet.properties)
            mine = property_bytes({"subscription_identifier": 3})
            row["ours fast"] = lambda p=packet, s=shared, m=mine: encode_publish5(
                p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id or 0, s + m)
            row["3.1.1"] = lambda p=packet: encode_publish(
                p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id or 0)
        if mqtt5 is not None:
            row["mqtt5"] = lambda n=name: _lib_packet(n).write()
        jobs[("encode", name)] = (row, 1)
    for row, _ in jobs.values():
        for fn in row.values():
            fn()  # warm caches (the topic caches, mqtt5's import)
    best: dict = {}
    for _ in range(rounds):  # interleaved, so a busy moment hurts all alike
        for key, (row, per) in jobs.items():
            count = encodes if per == 1 else 1
            for column, fn in row.items():
                ns = _cpu_ns(fn, count, per)
                best[key, column] = min(best.get((key, column), ns), ns)
    rows = []
    for (operation, name) in jobs:
        rows.append((operation, name, *(best.get(((operation, name), c)) for c in
                                        ("ours", "ours fast", "3.1.1", "mqtt5", "mqtt5+convert"))))
    return rows


# -- strictness --------------------------------------------------------------------------

def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return _u16(len(raw)) + raw


def _frame(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((first, len(body))) + body


def _props(*items: bytes) -> bytes:
    body = b"".join(items)
    return bytes((len(body),)) + body


def _connect(properties: bytes = b"\x00", flags: int = 0x02, rest: bytes = _s("c")) -> bytes:
    return _frame(0x10, _s("MQTT") + bytes((5, flags)) + _u16(60) + properties + rest)


#: (what, statement, bytes, the reason code we refuse it with).
MALFORMED = [
    ("Topic Alias in CONNECT", "2.2.2.2", _connect(_props(b"\x23" + _u16(1))), 0x81),
    ("Session Expiry in PUBLISH", "2.2.2.2",
     _frame(0x30, _s("t") + _props(b"\x11" + b"\x00\x00\x00\x01")), 0x81),
    ("unknown property 0x7f", "2.2.2.2", _frame(0x30, _s("t") + _props(b"\x7f\x00")), 0x81),
    ("property length past the end", "2.2.2.1", _frame(0x30, _s("t") + b"\x09\x02\x00"), 0x81),
    ("content type not UTF-8", "MQTT-1.5.4-1",
     _frame(0x30, _s("t") + _props(b"\x03" + _s(b"\xff"))), 0x81),
    ("U+0000 in a user property", "MQTT-1.5.4-2",
     _frame(0x30, _s("t") + _props(b"\x26" + _s("a\x00") + _s("v"))), 0x81),
    ("SUBSCRIBE reserved option bits", "MQTT-3.8.3-5",
     _frame(0x82, _u16(1) + b"\x00" + _s("a") + b"\x40"), 0x81),
    ("AUTH reason code without properties", "3.15.2.1", b"\xf0\x01\x18", 0x81),
    ("Topic Alias twice", "3.3.2.3.4",
     _frame(0x30, _s("t") + _props(b"\x23\x00\x01", b"\x23\x00\x01")), 0x82),
    ("Session Expiry twice in CONNECT", "3.1.2.11.2",
     _connect(_props(b"\x11\x00\x00\x00\x01", b"\x11\x00\x00\x00\x01")), 0x82),
    ("Subscription Identifier 0", "3.8.2.1.2",
     _frame(0x82, _u16(1) + _props(b"\x0b\x00") + _s("a") + b"\x00"), 0x82),
    ("Receive Maximum 0", "3.1.2.11.3", _connect(_props(b"\x21\x00\x00")), 0x82),
    ("Maximum Packet Size 0", "3.1.2.11.4", _connect(_props(b"\x27" + bytes(4))), 0x82),
    ("Request Problem Information 2", "3.1.2.11.7", _connect(_props(b"\x17\x02")), 0x82),
    ("Payload Format Indicator 2", "3.3.2.3.2",
     _frame(0x30, _s("t") + _props(b"\x01\x02")), 0x82),
    ("Authentication Data without Method", "3.1.2.11.10",
     _connect(_props(b"\x16" + _s(b"x"))), 0x82),
    ("Response Topic with a wildcard", "MQTT-3.3.2-14",
     _frame(0x30, _s("t") + _props(b"\x08" + _s("r/#"))), 0x82),
    ("empty topic without Topic Alias", "3.3.2.1", _frame(0x30, _s("") + b"\x00"), 0x82),
    ("SUBSCRIBE QoS 3", "3.8.3.1", _frame(0x82, _u16(1) + b"\x00" + _s("a") + b"\x03"), 0x82),
    ("Retain Handling 3", "3.8.3.1", _frame(0x82, _u16(1) + b"\x00" + _s("a") + b"\x30"), 0x82),
    ("No Local on a shared subscription", "MQTT-3.8.3-4",
     _frame(0x82, _u16(1) + b"\x00" + _s("$share/g/a") + b"\x04"), 0x82),
    ("PUBACK reason code 0x92", "MQTT-3.4.2-1", _frame(0x40, _u16(1) + b"\x92"), 0x82),
    ("PUBREL reason code 0x10", "MQTT-3.6.2-1", _frame(0x62, _u16(1) + b"\x10"), 0x82),
    ("DISCONNECT reason code 0x18", "MQTT-3.14.2-1", _frame(0xE0, b"\x18"), 0x82),
    ("wildcard in PUBLISH topic", "MQTT-3.3.2-2", _frame(0x30, _s("a/+") + b"\x00"), 0x82),
    ("Packet Identifier 0", "MQTT-2.2.1-3", _frame(0x32, _s("t") + _u16(0) + b"\x00"), 0x82),
    ("Subscription Identifier from a client", "MQTT-3.3.4-6",
     _frame(0x30, _s("t") + _props(b"\x0b\x01")), 0x82),
    ("Topic Alias 0", "MQTT-3.3.2-8", _frame(0x30, _s("t") + _props(b"\x23\x00\x00")), 0x94),
]


def _lib_verdict(wire: bytes) -> str:
    """How mqtt5.read takes one packet: accepted, refused (an exception), or
    panicked (pyo3's PanicException, a BaseException a broker would have to
    catch around every read)."""
    if mqtt5 is None:
        return "n/a"
    try:
        mqtt5.read(memoryview(wire))
    except Exception:  # noqa: BLE001 - any refusal counts
        return "refused"
    except BaseException as exc:  # noqa: BLE001
        if type(exc).__name__ != "PanicException":
            raise
        return "panicked"
    return "accepted"


def strictness() -> list[tuple]:
    """Rows of (what, statement, our reason code or None, mqtt5's verdict)."""
    rows = []
    for what, statement, wire, _ in MALFORMED:
        try:
            Parser(protocol_level=5).feed(wire)
            ours = None
        except ProtocolError as error:
            ours = error.reason_code
        rows.append((what, statement, ours, _lib_verdict(wire)))
    return rows


# -- report ------------------------------------------------------------------------------

def _ns(value) -> str:
    return "" if value is None else f"{value:,.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rounds, per_read, encodes = (1, 50, 200) if args.quick else (args.rounds, 1000, 20_000)
    version = getattr(mqtt5, "__version__", None) or _dist_version()
    print(f"CPU ns per packet, best of {rounds} interleaved rounds; mqtt5 {version}\n")
    print("| | packet | ours (5.0) | ours, fan-out path | ours (3.1.1) | mqtt5"
          " | mqtt5 + to our packet |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for operation, name, *values in measure(rounds, per_read, encodes):
        print(f"| {operation} | {name} | " + " | ".join(_ns(v) for v in values) + " |")
    print("\n| malformed packet | statement | ours | mqtt5 |")
    print("|---|---|---|---|")
    rows = strictness()
    for what, statement, ours, lib in rows:
        lib_text = f"**{lib}**" if lib in ("accepted", "panicked") else lib
        ours_text = "**accepted**" if ours is None else f"0x{ours:02X}"
        print(f"| {what} | {statement} | {ours_text} | {lib_text} |")
    verdicts = [lib for *_, lib in rows]
    if mqtt5 is None:
        print("\nmqtt5 is not installed (pip install mqtt5): our figures only.")
        return 0
    print(f"\nmqtt5 refused {verdicts.count('refused')} of {len(rows)}, accepted"
          f" {verdicts.count('accepted')}, panicked on {verdicts.count('panicked')};"
          f" ours refused {sum(1 for r in rows if r[2])}, each with its reason code.")
    return 0


def _dist_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("mqtt5")
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
