"""TLS certificates renewed without a restart: on SIGHUP or when the files
change, new connections get the new certificate, open ones go on."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from reactorapp.auth.tls import ReloadingTLS, TLSFiles, server_endpoint
from reactorapp.mqtt import packets as P
from tests.brokerproc import running_broker
from tests.certs import issue, make_ca
from tests.rawmqtt import RawClient


def served_name(host: str, port: int, ca) -> tuple[str, ssl.SSLSocket]:
    """The common name of the certificate the server shows, and the socket."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    raw = socket.create_connection((host, port), timeout=10)
    wrapped = context.wrap_socket(raw, server_hostname="localhost")
    certificate = x509.load_der_x509_certificate(wrapped.getpeercert(binary_form=True))
    name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return name, wrapped


def renew(tmp_path, ca, live, name: str) -> None:
    """Write a new certificate and key over the files the listener reads."""
    fresh = issue(tmp_path, ca, name, server=True, stem=name)
    for source, target in ((fresh.key, live.key), (fresh.cert, live.cert)):
        shutil.copyfile(source, str(target) + ".new")
        (target.parent / (target.name + ".new")).replace(target)


def serving_certificate(tls: ReloadingTLS) -> str:
    certificate = tls.options.certificate.to_cryptography()
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_changed_files_are_read_again_and_broken_ones_are_not_used(tmp_path):
    ca = make_ca(tmp_path, "ca")
    live = issue(tmp_path, ca, "localhost", server=True, stem="live")
    tls = ReloadingTLS(TLSFiles(private_key=str(live.key), cert_key=str(live.cert)))
    assert tls.check() is False  # nothing changed
    renew(tmp_path, ca, live, "renewed")
    assert tls.check() is True
    assert serving_certificate(tls) == "renewed"
    # A key that does not belong to the certificate: the old pair stays.
    other = issue(tmp_path, ca, "other", server=True)
    shutil.copyfile(other.key, live.key)
    assert tls.check() is False
    assert serving_certificate(tls) == "renewed"


def test_an_endpoint_without_a_port_or_with_unknown_parameters_is_refused(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    live = issue(tmp_path, make_ca(tmp_path, "ca"), "localhost", server=True)
    with pytest.raises(ValueError, match="unknown parameter"):
        server_endpoint(MemoryReactorClock(),
                        f"ssl:0:privateKey={live.key}:certKey={live.cert}:bogus=1")


def test_sighup_gives_new_connections_the_new_certificate(tmp_path):
    ca = make_ca(tmp_path, "ca")
    live = issue(tmp_path, ca, "first", server=True, stem="live")
    endpoint = f"ssl:0:interface=127.0.0.1:privateKey={live.key}:certKey={live.cert}"
    with running_broker(tmp_path, "--mqtt", endpoint) as broker:
        port = int(broker.wait_for(
            rf"MQTT listening on [^\s:]+:(?!{broker.port}\b)(?P<port>\d+)")["port"])
        name, old_socket = served_name(broker.host, port, ca)
        assert name == "first"
        old = RawClient(broker.host, port, sock=old_socket)
        assert old.connect("old").return_code == 0

        renew(tmp_path, ca, live, "second")
        broker.proc.send_signal(signal.SIGHUP)
        broker.wait_for("TLS certificate .* loaded again")
        name, new_socket = served_name(broker.host, port, ca)
        assert name == "second"
        new = RawClient(broker.host, port, sock=new_socket)
        assert new.connect("new").return_code == 0
        # The connection made before goes on with the certificate it began with.
        old.send(P.PingReq())
        assert old.read().type == "PINGRESP"
        assert broker.proc.poll() is None
