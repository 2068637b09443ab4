"""Named event-stream sessions end to end against ``twistd -n reactorapp``:
a raw HTTP client that resumes with ``last_event_id`` after its stream was
cut, and after the hub was killed with SIGKILL between the messages and the
reconnect. Every message arrives once, in order."""

from __future__ import annotations

import http.client
import json
import socket

from tests.brokerproc import running_broker

TIMEOUT = 10.0
STREAM = "/api/v1/stream?session=reader&filter=orders/%23&qos=1&session_expiry=600"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def publish(broker, payloads, qos=1) -> None:
    """Publish over HTTP; the answer means every message is placed (durably)."""
    connection = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
    try:
        body = json.dumps([{"topic": "orders/new", "payload": p, "qos": qos} for p in payloads])
        connection.request("POST", "/api/v1/publish", body.encode(),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        connection.close()


class EventReader:
    """A plain HTTP client reading Server-Sent Events, each read bounded."""

    def __init__(self, broker, path: str = STREAM, last_event_id: int | None = None) -> None:
        if last_event_id is not None:
            path += f"&last_event_id={last_event_id}"
        self.connection = http.client.HTTPConnection(broker.host, broker.http_port,
                                                     timeout=TIMEOUT)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        self.last_id: int | None = None

    def next(self) -> tuple[int | None, str]:
        """The next event with data: (id, payload)."""
        fields = {}
        while True:
            line = self.response.readline()
            assert line, "the stream ended"
            line = line.decode().rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:
                event_id = int(fields["id"]) if "id" in fields else None
                if event_id is not None:
                    self.last_id = event_id
                return event_id, json.loads(fields["data"])["payload"]
            else:
                fields = {}

    def take(self, count: int) -> list[str]:
        return [self.next()[1] for _ in range(count)]

    def close(self) -> None:
        self.connection.close()


def test_resume_after_the_stream_was_cut(tmp_path):
    with running_broker(tmp_path, "--sys-interval", "0") as broker:
        reader = EventReader(broker)
        publish(broker, ["1", "2", "3"])
        assert reader.take(3) == ["1", "2", "3"]
        last = reader.last_id
        reader.close()
        publish(broker, ["4", "5", "6"])
        reader = EventReader(broker, last_event_id=last)
        publish(broker, ["7"])
        assert reader.take(4) == ["4", "5", "6", "7"]
        reader.close()
        metrics = http.client.HTTPConnection(broker.host, broker.http_port, timeout=TIMEOUT)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        assert "reactorapp_sse_resumed_total 1.0" in text
        assert "reactorapp_sse_replayed_total 3.0" in text
    assert "Traceback" not in broker.log


def test_resume_after_the_hub_was_killed(tmp_path):
    """SIGKILL between the messages and the reconnect: what the hub
    answered for is on disk, and the restarted hub sends it, after the id
    the client reports, once and in order."""
    port = free_port()
    http_arg = ["--http", f"tcp:{port}:interface=127.0.0.1", "--sys-interval", "0"]
    with running_broker(tmp_path, *http_arg) as broker:
        reader = EventReader(broker)
        publish(broker, [str(i) for i in range(1, 6)])
        assert reader.take(3) == ["1", "2", "3"]  # 4 and 5 were sent, not seen
        last = reader.last_id
        reader.close()
        publish(broker, [str(i) for i in range(6, 11)])
        publish(broker, ["not kept"], qos=0)
        broker.kill()
    with running_broker(tmp_path, *http_arg) as broker:
        assert "Restored 1 stream sessions" in broker.log
        reader = EventReader(broker, last_event_id=last)
        publish(broker, ["11"])
        assert reader.take(8) == [str(i) for i in range(4, 12)]
        first_new = reader.last_id
        reader.close()
        # Ids go on increasing after the restart: the last one acknowledges all.
        assert first_new > last
        publish(broker, ["12"])
        reader = EventReader(broker, last_event_id=first_new)
        assert reader.take(1) == ["12"]
        reader.close()
    assert "Traceback" not in broker.log
