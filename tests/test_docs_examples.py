"""Every example in README.md and docs/ works when copied.

ACL, TOML, JSON and Python blocks are parsed (and the webhook signature
check is run); every ``twistd`` command line, in blocks and in inline code,
is parsed by twistd's own option parser with the reactorapp plugin, so each
flag it uses exists and each value is of the right kind; every
``python -m reactorapp...`` command's arguments are parsed by its own
parser. The cheap, local commands are run: the tour's mosquitto_pub and
mosquitto_sub and every curl command against ``twistd -n reactorapp``, the
security quick start, and the TLS walkthrough from ``openssl`` to a device
publishing with its certificate. A command this file does not know fails
``test_every_command_is_known``, so a new kind of example comes with a way
to check it. (docs/extending.md's tutorial is run by test_extension_docs.py.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from reactorapp.auth.acl import ACL
from reactorapp.auth import passwd
from reactorapp import backup
from reactorapp.config import SETTINGS, load_config
from reactorapp.tap import TABLES
from reactorapp.webhooks.signing import sign
from tests.brokerproc import REPO, running_broker
from tests.paho_client import PahoClient

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`((?:twistd|python -m reactorapp)[^`]*)`")
ACL_WORDS = ("user ", "topic ", "pattern ")
#: Blocks run by test_extension_docs.py, as the tutorial's steps.
TUTORIAL = REPO / "docs" / "extending.md"

#: First word of a command -> how it is checked here.
KNOWN = {
    "twistd": "parsed by twistd's options (test_twistd_command_lines_parse)",
    "python": "python -m reactorapp... parsed; set-up commands recognised",
    "python3": "the README's set-up commands",
    "pip": "set-up (README, extending.md)",
    ".": "set-up: activating the virtualenv",
    "mkdir": "extending.md, run by test_extension_docs.py",
    "touch": "extending.md, run by test_extension_docs.py",
    "trial": "extending.md, run by test_extension_docs.py",
    "mosquitto_pub": "run in test_the_tour_runs",
    "mosquitto_sub": "run in test_the_tour_runs",
    "curl": "run in test_the_tour_runs",
    "openssl": "run in test_the_tls_walkthrough",
    "printf": "run in test_the_tls_walkthrough",
    "echo": "run in test_the_tls_walkthrough",
    "cat": "heredocs that make files, run in test_the_tour_runs",
    "redis-server": "the cluster walkthrough (README, cluster.md), run in"
                    " test_cluster_docs.py",
    # operations.md: they change the machine, so they are not run here; the
    # systemd unit itself is checked by test_operations_docs.py.
    "useradd": "operations.md, not run",
    "cp": "operations.md, not run",
    "chown": "operations.md, not run",
    "systemctl": "operations.md, not run",
    "journalctl": "operations.md, not run",
}
#: ``python -m MODULE`` commands whose arguments are parsed by their own parser.
PARSERS = {"reactorapp.passwd": passwd.make_parser, "reactorapp.backup": backup.make_parser}
SETUP = {"python3 -m venv .venv", ". .venv/bin/activate", "pip install .", "twistd -n reactorapp",
         "pip install -e '.[test]' --config-settings editable_mode=compat", "python -m pytest -q"}


@dataclass(frozen=True)
class Block:
    page: Path
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}: {self.text[:60]!r}"


def blocks(kind: str | None = None, pages=PAGES) -> list[Block]:
    found = [Block(page, k, text) for page in pages for k, text in FENCE.findall(page.read_text())]
    return [b for b in found if kind is None or b.kind == kind]


def is_acl(block: Block) -> bool:
    lines = [line.strip() for line in block.text.splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    return block.kind == "" and bool(rules) and all(line.startswith(ACL_WORDS) for line in rules)


# -- shell --------------------------------------------------------------------------


def logical_lines(text: str) -> list[str]:
    """Lines of a sh block, continuation lines joined, a heredoc kept with
    its command."""
    raw, lines, i = text.splitlines(), [], 0
    while i < len(raw):
        line = raw[i]
        while line.endswith("\\"):
            i += 1
            line = line[:-1] + " " + raw[i].strip()
        heredoc = re.search(r"<<\s*'?(\w+)'?", line)
        if heredoc:
            end = raw.index(heredoc[1], i + 1)
            line, i = "\n".join(raw[i:end + 1]), end
        if line.strip():
            lines.append(line)
        i += 1
    return lines


def commands(line: str) -> list[list[str]]:
    """The simple commands of one line, without redirections and comments."""
    first = line.split("\n", 1)[0]  # a heredoc's body is data
    lexer = shlex.shlex(first, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found, current, skip = [], [], False
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            found.append(current)
            current = []
        elif token in (">", ">>", "<", "<<"):
            skip = True
        elif skip:
            skip = False
        else:
            current.append(token)
    found.append(current)
    return [c for c in found if c]


def shell_commands(pages=PAGES) -> list[tuple[Block, list[str]]]:
    """Every simple command; a program given by its path (a virtualenv's
    ``bin/twistd``) is named by its file name."""
    return [(block, [os.path.basename(command[0]), *command[1:]])
            for block in blocks("sh", pages)
            for line in logical_lines(block.text) for command in commands(line)]


def inline_commands() -> list[tuple[Path, list[str]]]:
    return [(page, shlex.split(text)) for page in PAGES
            for text in INLINE.findall(page.read_text())]


def twistd_parses(args: list[str]) -> None:
    """twistd's own parser, with the reactorapp plugin as its subcommand.
    ``--uid``/``--gid`` name a service user this machine need not have: the
    test's own ids stand in, as only the flags are checked."""
    args = list(args)
    for flag, own in (("--uid", os.getuid()), ("--gid", os.getgid())):
        if flag in args[:args.index("reactorapp")] and flag in args:
            args[args.index(flag) + 1] = str(own)
    try:
        ServerOptions().parseOptions(args)
    except SystemExit as e:  # --help prints and exits
        assert e.code in (0, None), args


def test_every_command_is_known():
    for block, command in shell_commands():
        assert command[0] in KNOWN, (
            f"{block}: add {command[0]!r} to KNOWN in {Path(__file__).name}, "
            "with the test that checks it")


def test_twistd_command_lines_parse(capsys):
    lines = [c for _, c in shell_commands() if c[0] == "twistd"]
    # Inline, `twistd -n` alone names an option; with reactorapp it is a command.
    lines += [c for _, c in inline_commands() if c[0] == "twistd" and "reactorapp" in c]
    assert len(lines) >= 8, lines
    for command in lines:
        try:
            twistd_parses(command[1:])
        except usage.UsageError as e:
            raise AssertionError(f"{shlex.join(command)}: {e}") from None


def test_reactorapp_commands_parse():
    """``python -m reactorapp.X ...``: the arguments parse with X's own parser.
    Inline, the bare command is a name; with arguments it is an example."""
    found = [c for _, c in shell_commands() + inline_commands()
             if c[:2] == ["python", "-m"] and c[2] in PARSERS and len(c) > 3]
    assert {c[2] for c in found} == set(PARSERS), found
    for command in found:
        PARSERS[command[2]]().parse_args(command[3:])  # SystemExit(2) on a bad one
    for _, command in shell_commands() + inline_commands():
        if command[0] in ("python", "python3") and command[1] == "-m":
            assert command[2] in ("venv", "pytest", "reactorapp.metricsdoc", *PARSERS), command


def test_the_readme_set_up_commands():
    """The two commands at the top of the README, and nothing else unusual
    under python3 or pip."""
    readme = [shlex.join(c) for b, c in shell_commands([REPO / "README.md"])
              if c[0] in ("python3", "pip", ".") or c[:3] == ["python", "-m", "pytest"]]
    assert set(readme) <= SETUP, readme


# -- files ---------------------------------------------------------------------------


def test_acl_examples_parse():
    acls = [b for b in blocks() if is_acl(b)]
    assert {b.page.name for b in acls} >= {"README.md", "security.md"}, acls
    for block in acls:
        ACL.parse(block.text, str(block))
    assert any(re.search(r"\S\s+# ", b.text) for b in acls), "no trailing comment tried"


def test_toml_examples_load(tmp_path):
    examples = [b for b in blocks("toml") if b.page != TUTORIAL]
    assert {b.page.name for b in examples} >= {
        "README.md", "configuration.md", "mosquitto.md", "webhooks.md"}
    for i, block in enumerate(examples):
        path = tmp_path / f"{i}.toml"
        path.write_text(block.text)
        assert load_config(str(path), TABLES), block


def test_json_examples_parse():
    examples = blocks("json")
    assert examples
    for block in examples:
        json.loads(block.text)


def test_python_examples_compile():
    examples = blocks("python")
    assert len(examples) >= 4
    for block in examples:
        compile(block.text, str(block), "exec")


def test_the_webhook_signature_check_agrees_with_the_hub():
    (block,) = [b for b in blocks("python", [REPO / "docs" / "webhooks.md"])]
    scope = {}
    exec(compile(block.text, str(block), "exec"), scope)
    genuine, now = scope["genuine"], int(time.time())
    body = b'{"topic": "t"}'
    signature = sign("s3cret", now, body)
    assert genuine(b"s3cret", str(now), body, signature)
    assert not genuine(b"other", str(now), body, signature)
    assert not genuine(b"s3cret", str(now - 3600), body, sign("s3cret", now - 3600, body))


def test_the_flag_reference_is_complete():
    """docs/configuration.md lists every setting, and nothing else, once."""
    text = (REPO / "docs" / "configuration.md").read_text()
    listed = re.findall(r"^\| `--([a-z-]+)[ `]", text, re.M)
    assert sorted(listed) == sorted([s.key for s in SETTINGS] + ["config"])


def test_the_mosquitto_mapping_names_real_flags():
    text = (REPO / "docs" / "mosquitto.md").read_text()
    ours = {s.key for s in SETTINGS} | {"config"}
    twistd = {"uid", "gid", "logfile", "pidfile"}
    named = set(re.findall(r"`(?:twistd )?--([a-z-]+)", text))
    assert named and named <= ours | twistd, named - ours - twistd


def test_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} -> {target}"
        for target, anchor in re.findall(r"\]\(([^)#\s]*\.md)?#([^)]+)\)", page.read_text()):
            linked = page.parent / target if target else page
            assert anchor in anchors(linked), f"{page.name} -> {target}#{anchor}"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a page."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


# -- run them -------------------------------------------------------------------------


def run(command: list[str], cwd, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def heredocs(page: Path) -> list[str]:
    return [line for b in blocks("sh", [page]) for line in logical_lines(b.text) if "<<" in line]


#: Pages whose curl commands (and backup command) the tour runs, in this order.
HTTP_PAGES = [REPO / "README.md", *(REPO / "docs" / name for name in (
    "http.md", "streams.md", "webhooks.md", "operations.md"))]


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None or shutil.which("curl") is None,
                    reason="mosquitto-clients or curl is not installed")
def test_the_tour_runs(tmp_path):
    """The README's mosquitto_pub and mosquitto_sub commands, then every line
    with curl in the README, http.md, streams.md, webhooks.md and
    operations.md, in order, against one hub, and operations.md's backup.
    Subscribers stop after one message (the retained ones are there)."""
    for line in heredocs(REPO / "docs" / "webhooks.md"):
        subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True, timeout=10)
    with running_broker(tmp_path, "--sys-interval", "1") as broker:
        mosquitto = [c for _, c in shell_commands([REPO / "README.md"])
                     if c[0].startswith("mosquitto_")]
        assert len(mosquitto) == 6, mosquitto
        for command in sorted(mosquitto, key=lambda c: c[0] == "mosquitto_sub"):
            command = [*command, "-p", str(broker.port)]
            if command[0] == "mosquitto_sub":
                command += ["-W", "10"] + ([] if "-C" in command else ["-C", "1"])
            done = run(command, tmp_path)
            assert done.returncode == 0, (command, done.stderr)
        tour = PahoClient(broker.host, broker.port, "tour").connect()  # curl looks it up
        try:
            lines = [(b, line) for b in blocks("sh", HTTP_PAGES)
                     for line in logical_lines(b.text)
                     if any(c[0] == "curl" for c in commands(line))]
            assert len(lines) >= 20, lines
            for block, line in lines:
                done = run_curl_line(line, broker.http_port, tmp_path)
                assert done.returncode == 0 or (done.returncode == 28 and "-sN" in line), (
                    str(block), line, done.stdout, done.stderr)
        finally:
            tour.close()
        (save,) = [c for _, c in shell_commands(HTTP_PAGES) if c[2:4] == ["reactorapp.backup", "save"]]
        save = [a.replace("127.0.0.1:8080", f"127.0.0.1:{broker.http_port}") for a in save]
        done = run([sys.executable, *save[1:]], tmp_path)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / save[-1]).stat().st_size > 0


#: Examples that name something that need not exist (curl --fail says 22).
MAY_BE_MISSING = ("dead/17/retry",)


def run_curl_line(line: str, http_port: int, cwd) -> subprocess.CompletedProcess:
    """One line of a sh block, curl bounded in time and failing on an HTTP
    error, sent to the test's hub; run by bash, so that pipes work."""
    for address in ("localhost:8080", "127.0.0.1:8080"):
        line = line.replace(address, f"127.0.0.1:{http_port}")
    line = re.sub(r"\bcurl ", "curl --fail --max-time 3 ", line)
    done = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=cwd, capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode == 22 and any(s in line for s in MAY_BE_MISSING):
        done.returncode = 0
    return done


def tls_setup(folder: Path) -> None:
    """The TLS walkthrough's first block: a CA, the broker's and a device's
    certificates, and the ACL, made in ``folder``."""
    section = (REPO / "docs" / "security.md").read_text().split("### TLS and client")[1]
    setup = FENCE.findall(section)[0][1]
    done = subprocess.run(["bash", "-e", "-c", setup], cwd=folder, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_tls_walkthrough(tmp_path):
    """Every file the walkthrough uses is made by one of its steps; the broker
    starts as shown, and the device publishes with its certificate (with
    mosquitto_pub when it is installed, and with paho)."""
    section = (REPO / "docs" / "security.md").read_text().split("### TLS and client")[1]
    section = section.split("\n### ")[0]
    setup, start, publish = [text for _, text in FENCE.findall(section)]
    tls_setup(tmp_path)
    args = shlex.split(logical_lines(start)[0])
    assert args[:3] == ["twistd", "-n", "reactorapp"]
    args = [a.replace("ssl:8883:", "ssl:0:") for a in args[3:]]
    with running_broker(tmp_path, *args, "--http", "none") as broker:
        port = tls_port(broker)
        device = tls_client(tmp_path, "device1", port)
        try:
            assert device.subscribe(("devices/device1/#", 1)) == [1]
            assert device.subscribe(("devices/device2/#", 1)) == [0x80]
            command = shlex.split(logical_lines(publish)[0])
            if shutil.which(command[0]):
                command[command.index("-p") + 1] = str(port)
                done = run(command, tmp_path)
                assert done.returncode == 0, done.stderr
            else:
                device.publish("devices/device1/temp", b"21", 1)
            message = device.next()
            assert (message.topic, message.payload) == ("devices/device1/temp", b"21")
        finally:
            device.close()


def tls_port(broker) -> int:
    """The port of the ``ssl:`` listener: the MQTT listener that is not the
    plain one the test helper adds."""
    match = broker.wait_for(rf"MQTT listening on [^\s:]+:(?!{broker.port}\b)(\d+)")
    return int(match[1])


def tls_client(folder: Path, name: str, port: int) -> PahoClient:
    client = PahoClient("localhost", port, name)
    client.client.tls_set(ca_certs=str(folder / "ca.pem"), certfile=str(folder / f"{name}.pem"),
                          keyfile=str(folder / f"{name}.key"), cert_reqs=ssl.CERT_REQUIRED)
    return client.connect()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_security_quick_start(tmp_path):
    """The README's ACL and start command, with the TLS files the walkthrough
    makes and a user: alice logs in over TLS and gets what the ACL says."""
    readme = REPO / "README.md"
    tls_setup(tmp_path)
    (tmp_path / "acl").write_text(next(b.text for b in blocks(pages=[readme]) if is_acl(b)))
    passwd.set_password(str(tmp_path / "passwd"), "alice", b"wonderland", n=2 ** 4)
    (start,) = [c for _, c in shell_commands([readme]) if c[0] == "twistd" and "--acl" in c]
    args = [re.sub(r"^ssl:\d+:", "ssl:0:interface=127.0.0.1:", a) for a in start[3:]]
    with running_broker(tmp_path, *args) as broker:
        alice = PahoClient("localhost", tls_port(broker), "alice-phone")
        alice.client.username_pw_set("alice", "wonderland")
        alice.client.tls_set(ca_certs=str(tmp_path / "ca.pem"), cert_reqs=ssl.CERT_REQUIRED)
        alice.connect()
        try:
            assert alice.subscribe(("home/#", 1), ("home/secrets/#", 1), ("public/#", 0)) == [
                1, 0x80, 0x80]
        finally:
            alice.close()
        assert broker.http_port
