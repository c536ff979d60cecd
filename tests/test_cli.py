"""Tests for greenbus.cli: the ``greenbus`` command answers bad input in one line.

Every case runs ``python -m greenbus ...`` as a real child process, as a
user would, and checks what the user gets: the exit status (2 for a usage
error, 1 for a runtime failure), stderr without a traceback and of exactly
one line, and that the line names the problem.  Usage errors are found
before anything connects or binds, so ``pub`` and ``sub`` report a bad topic
at once, not after waiting for a hub that is not there.

The working paths (``serve`` listening, ``pub`` and ``sub`` talking to a
hub) are tested end to end in tests/test_hub.py and tests/test_security.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, child_env, free_port, start_hub_process

#: Seconds a child may run; a ``serve`` that wrongly starts is killed by then.
CHILD_TIMEOUT = 20.0


@dataclass(frozen=True)
class Run:
    """What a ``greenbus`` child process did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    def line(self) -> str:
        """The one line on stderr.

        Raises:
            AssertionError: stderr holds a traceback, nothing, or several lines.
        """
        lines = self.stderr.splitlines()
        assert "Traceback" not in self.stderr, self.describe()
        assert len(lines) == 1 and lines[0].strip(), self.describe()
        return lines[0]

    def describe(self) -> str:
        return (
            f"greenbus {' '.join(self.args)}: exit {self.returncode} after {self.elapsed:.1f} s\n"
            f"--- stderr:\n{self.stderr}--- stdout:\n{self.stdout}"
        )


def greenbus(*args: str, timeout: float = CHILD_TIMEOUT) -> Run:
    """Run ``python -m greenbus ARGS`` to its end (killed after ``timeout`` s)."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "greenbus", *args],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - started
    return Run(args, proc.returncode, proc.stdout, proc.stderr, elapsed)


def nowhere() -> str:
    """A hub URL on 127.0.0.1 where nothing listens."""
    return f"ws://127.0.0.1:{free_port()}/"


# -- usage errors: status 2, one line in argparse's style -------------------------------

#: ``greenbus serve`` options with a bad value, and what the line must name.
#: Each also gets ``--port 0``, so a serve that wrongly starts takes no known port.
SERVE_USAGE_ERRORS = {
    "port-too-big": (["--port", "99999"], "--port"),
    "port-negative": (["--port", "-1"], "--port"),
    "port-not-a-number": (["--port", "eighty"], "--port"),
    "message-size-below-64": (["--max-message-size", "10"], "--max-message-size"),
    "no-connections": (["--max-connections", "0"], "--max-connections"),
    "close-timeout-zero": (["--close-timeout", "0"], "--close-timeout"),
    "close-timeout-negative": (["--close-timeout", "-1"], "--close-timeout"),
    "close-timeout-nan": (["--close-timeout", "nan"], "--close-timeout"),
    "no-pending": (["--max-pending", "0"], "--max-pending"),
    "no-pending-bytes": (["--max-pending-bytes", "0"], "--max-pending-bytes"),
    "no-subscriptions": (["--max-subscriptions", "0"], "--max-subscriptions"),
    "stats-interval-nan": (["--stats-interval", "nan"], "--stats-interval"),
    "redis-not-a-url": (["--redis", "notaurl"], "--redis"),
    "redis-http-url": (["--redis", "http://127.0.0.1:6379/"], "--redis"),
    "redis-port-too-big": (["--redis", "redis://127.0.0.1:99999/0"], "--redis"),
    "redis-cluster-without-port": (["--redis", "redis+cluster://127.0.0.1"], "--redis"),
    "redis-cluster-no-node": (["--redis", "redis+cluster://"], "--redis"),
    "redis-cluster-database": (["--redis", "redis+cluster://127.0.0.1:7000/2"], "--redis"),
    "certfile-without-keyfile": (["--certfile", "cert.pem"], "--keyfile"),
    "keyfile-without-certfile": (["--keyfile", "key.pem"], "--certfile"),
    "wsgi-with-certfile": (
        ["--transport", "wsgi", "--certfile", "c.pem", "--keyfile", "k.pem"],
        "--transport wsgi",
    ),
    "wsgi-with-allow-origin": (
        ["--transport", "wsgi", "--allow-origin", "https://app.example.com"],
        "--transport wsgi",
    ),
    "unknown-option": (["--prot", "8000"], "unrecognized arguments: --prot"),
}


@pytest.mark.parametrize(
    ("options", "named"), SERVE_USAGE_ERRORS.values(), ids=SERVE_USAGE_ERRORS.keys()
)
def test_serve_refuses_a_bad_option_in_one_line_and_exits_2(options: list[str], named: str) -> None:
    run = greenbus("serve", "--port", "0", *options)
    line = run.line()
    assert run.returncode == 2, run.describe()
    assert line.startswith("greenbus serve: error: "), run.describe()
    assert named in line, run.describe()
    assert run.stdout == "", "it must not have started listening"


#: ``greenbus pub``/``sub`` arguments that are wrong, and what the line must name.
#: Each also gets ``--url`` of a port where nothing listens (unless it sets its own),
#: right after the command: ``--`` ends the options (data that starts with "-").
CLIENT_USAGE_ERRORS = {
    "pub-topic-with-a-space": (["pub", "bad topic", "1"], "'bad topic'"),
    "pub-topic-with-an-empty-token": (["pub", "a..b", "1"], "'a..b'"),
    "pub-topic-with-a-wildcard": (["pub", "a.*", "1"], "'a.*'"),
    "pub-empty-topic": (["pub", "", "1"], "topic"),
    "pub-data-nan": (["pub", "a.b", "NaN"], "NaN"),
    "pub-data-infinity": (["pub", "a.b", "Infinity"], "Infinity"),
    "pub-data-minus-infinity": (["pub", "a.b", "--", "-Infinity"], "-Infinity"),
    "pub-data-nan-inside": (["pub", "a.b", '{"t": NaN}'], "NaN"),
    "pub-data-unquoted-string": (["pub", "a.b", "hi"], "JSON"),
    "pub-data-lone-surrogate": (["pub", "a.b", '"\\ud800"'], "surrogate"),
    "pub-http-url": (["pub", "a.b", "1", "--url", "http://127.0.0.1:8765/"], "--url"),
    "pub-url-port-too-big": (["pub", "a.b", "1", "--url", "ws://h:99999/"], "--url"),
    "pub-url-without-host": (["pub", "a.b", "1", "--url", "ws:///"], "--url"),
    "pub-url-port-zero": (["pub", "a.b", "1", "--url", "ws://127.0.0.1:0/"], "--url"),
    "pub-timeout-zero": (["pub", "a.b", "1", "--timeout", "0"], "--timeout"),
    "sub-pattern-with-an-empty-token": (["sub", "a..b"], "'a..b'"),
    "sub-pattern-with-gt-not-last": (["sub", "a.>.b"], "'a.>.b'"),
    "sub-pattern-with-a-space": (["sub", "a b"], "'a b'"),
    "sub-http-url": (["sub", "a", "--url", "http://127.0.0.1:8765/"], "--url"),
    "sub-url-port-too-big": (["sub", "a", "--url", "ws://h:99999/"], "--url"),
    "sub-negative-count": (["sub", "a", "--count", "-1"], "--count"),
    "sub-unknown-option": (["sub", "a", "--cout", "1"], "unrecognized arguments: --cout"),
}


@pytest.mark.parametrize(
    ("args", "named"), CLIENT_USAGE_ERRORS.values(), ids=CLIENT_USAGE_ERRORS.keys()
)
def test_pub_and_sub_refuse_bad_arguments_at_once_in_one_line_and_exit_2(
    args: list[str], named: str
) -> None:
    command, *rest = args
    with socket.socket() as hub:  # listens, never accepts: a dial would queue here
        hub.bind(("127.0.0.1", 0))
        hub.listen(8)
        url = [] if "--url" in rest else ["--url", f"ws://127.0.0.1:{hub.getsockname()[1]}/"]
        run = greenbus(command, *url, *rest)
        line = run.line()
        assert run.returncode == 2, run.describe()
        assert line.startswith(f"greenbus {command}: error: "), run.describe()
        assert named in line, run.describe()
        # Checked before connecting: nothing ever dialled the hub.
        hub.setblocking(False)
        with pytest.raises(BlockingIOError):
            hub.accept()


#: The smallest value of each limit that the hub itself accepts (HubConfig,
#: PeerLimits), and values that mean "off" or name a place to connect to later.
SMALLEST_GOOD_OPTIONS = [
    "--max-message-size", "64",
    "--max-connections", "1",
    "--close-timeout", "0.1",
    "--max-pending", "1",
    "--max-pending-bytes", "1",
    "--max-subscriptions", "1",
    "--stats-interval", "0",
]  # fmt: skip


def test_serve_accepts_the_smallest_limits_the_hub_accepts(tmp_path: Path) -> None:
    hub = start_hub_process(tmp_path / "hub.log", *SMALLEST_GOOD_OPTIONS)
    try:
        assert hub.health()["server"] == "greenbus"
    finally:
        hub.stop()
    assert "Traceback" not in hub.log()


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://user:pw@127.0.0.1/1", "unix:///tmp/redis.sock"]
)
def test_serve_accepts_every_kind_of_redis_url(url: str) -> None:
    # --help after a good --redis: parsed and checked, then help, nothing started.
    run = greenbus("serve", "--redis", url, "--help")
    assert run.returncode == 0, run.describe()
    assert run.stdout.startswith("usage: greenbus serve"), run.describe()


def test_a_bare_greenbus_keeps_argparse_usage_error_and_exits_2() -> None:
    run = greenbus()
    assert run.returncode == 2, run.describe()
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("usage: greenbus"), run.describe()
    assert "greenbus: error: the following arguments are required: COMMAND" in run.stderr


def test_an_unknown_command_keeps_argparse_usage_error_and_exits_2() -> None:
    run = greenbus("serv")
    assert run.returncode == 2, run.describe()
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("usage: greenbus"), run.describe()
    assert "greenbus: error: argument COMMAND: invalid choice: 'serv'" in run.stderr


# -- runtime failures: status 1, one line naming the problem ----------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a socket of the test listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("transport", ["websockets", "wsgi"])
def test_serve_on_a_busy_port_says_so_in_one_line_and_exits_1(
    busy_port: int, transport: str
) -> None:
    run = greenbus("serve", "--port", str(busy_port), "--transport", transport)
    assert run.line() == f"greenbus serve: port {busy_port} is already in use", run.describe()
    assert run.returncode == 1, run.describe()
    assert run.stdout == ""


#: Addresses ``serve`` cannot bind: not an address, and one not on this machine
#: (192.0.2.1 is TEST-NET-1, RFC 5737).
UNBINDABLE_HOSTS = ["999.1.1.1", "192.0.2.1"]


@pytest.mark.parametrize("transport", ["websockets", "wsgi"])
@pytest.mark.parametrize("host", UNBINDABLE_HOSTS)
def test_serve_on_an_address_it_cannot_bind_says_so_in_one_line_and_exits_1(
    host: str, transport: str
) -> None:
    port = free_port()
    run = greenbus("serve", "--host", host, "--port", str(port), "--transport", transport)
    line = run.line()
    assert line.startswith(f"greenbus serve: cannot listen on {host}:{port}: "), run.describe()
    assert len(line) > len(f"greenbus serve: cannot listen on {host}:{port}: "), "no reason"
    assert run.returncode == 1, run.describe()
    assert run.stdout == ""


def tls_files(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """A certificate and a key that cannot be loaded, in the way ``case`` says."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if case == "garbage":
        cert.write_text("this is not a certificate\n")
        key.write_text("nor is this a key\n")
    elif case == "directories":
        cert.mkdir()
        key.mkdir()
    elif case == "empty":
        cert.write_text("")
        key.write_text("")
    else:
        assert case == "missing"
    return cert, key


@pytest.mark.parametrize("case", ["missing", "garbage", "directories", "empty"])
def test_serve_with_tls_files_it_cannot_load_says_so_in_one_line_and_exits_1(
    tmp_path: Path, case: str
) -> None:
    cert, key = tls_files(tmp_path, case)
    run = greenbus("serve", "--port", "0", "--certfile", str(cert), "--keyfile", str(key))
    line = run.line()
    assert line.startswith("greenbus serve: cannot load the TLS certificate/key: "), run.describe()
    assert str(cert) in line, run.describe()
    assert run.returncode == 1, run.describe()
    assert run.stdout == ""


#: ACL files that are malformed: (file name, content; None: no such file).
BAD_ACLS = {
    "missing": ("acl.toml", None),
    "toml-syntax": ("acl.toml", b"[users.alice\ntoken = 'x'\n"),
    "json-syntax": ("acl.json", b'{"users": '),
    "json-not-a-table": ("acl.json", b"[1, 2]"),
    "no-users": ("acl.toml", b"[groups]\n"),
    "user-without-token": ("acl.toml", b"[users.alice]\npublish = ['a']\n"),
    "unknown-key": ("acl.toml", b"[users.alice]\ntoken = 'x'\nadmin = true\n"),
    "bad-pattern": ("acl.toml", b"[users.alice]\ntoken = 'x'\npublish = ['a..b']\n"),
    "not-utf8": ("acl.toml", b"\xff\xfe[users]\n"),
}


@pytest.mark.parametrize(("name", "content"), BAD_ACLS.values(), ids=BAD_ACLS.keys())
def test_serve_with_a_malformed_acl_says_what_is_wrong_in_one_line_and_exits_1(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    acl = tmp_path / name
    if content is not None:
        acl.write_bytes(content)
    run = greenbus("serve", "--port", "0", "--acl", str(acl))
    line = run.line()
    assert line.startswith(f"greenbus serve: {acl}: "), run.describe()
    assert run.returncode == 1, run.describe()
    assert run.stdout == ""


@pytest.mark.parametrize(
    "args", [["pub", "a.b", '"hi"'], ["sub", "a.>"]], ids=lambda args: str(args[0])
)
def test_pub_and_sub_without_a_hub_say_cannot_connect_in_one_line_and_exit_1(
    args: Sequence[str],
) -> None:
    url = nowhere()
    run = greenbus(*args, "--url", url, "--timeout", "0.5")
    assert run.line() == f"greenbus {args[0]}: cannot connect to {url}", run.describe()
    assert run.returncode == 1, run.describe()


# -- greenbus bench ---------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_bench_help_is_under_greenbus_bench_and_lists_perf_options(flag: str) -> None:
    run = greenbus("bench", flag)
    assert run.returncode == 0, run.describe()
    assert run.stdout.startswith("usage: greenbus bench "), run.describe()
    assert "python -m perf" not in run.stdout, run.describe()
    for option in ("--quick", "--tiny", "--only", "--out", "--seed"):
        assert option in run.stdout, run.describe()


# -- refusals from a real hub (issue 12) --------------------------------------------

REFUSING_ACL = """\
[users.alice]
token = "tok-alice"
publish = ["a.>"]
subscribe = ["a.>"]
"""


@pytest.fixture
def acl_hub_url(tmp_path: Path) -> Iterator[str]:
    """A ``greenbus serve --acl`` process where alice may use ``a.>`` only."""
    acl = tmp_path / "users.toml"
    acl.write_text(REFUSING_ACL, encoding="utf-8")
    hub = start_hub_process(tmp_path / "hub.log", "--acl", str(acl), "--stats-interval", "0")
    try:
        yield hub.url
    finally:
        hub.stop()


REFUSALS = {
    "pub-wrong-token": (["pub", "a.b", "1", "--token", "nope"], "unauthorized: missing or wrong"),
    "pub-no-token": (["pub", "a.b", "1"], "unauthorized: missing or wrong"),
    "pub-forbidden": (
        ["pub", "b.c", "1", "--token", "tok-alice"],
        "forbidden: user 'alice' may not publish to 'b.c'",
    ),
    "sub-wrong-token": (["sub", "a.>", "--token", "nope"], "unauthorized: missing or wrong"),
    "sub-forbidden": (
        ["sub", "b.>", "--token", "tok-alice"],
        "forbidden: user 'alice' may not subscribe to 'b.>'",
    ),
}


@pytest.mark.parametrize(("args", "said"), REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refusal_from_the_hub_is_one_line_and_exit_1(
    acl_hub_url: str, args: list[str], said: str
) -> None:
    # Issue 12: a wrong token made pub exit 0 and sub end in a LoopExit
    # traceback; a forbidden pub exited 0 saying nothing; a forbidden sub
    # warned and then ran forever.
    run = greenbus(*args, "--url", acl_hub_url)
    assert run.returncode == 1, run.describe()
    assert run.line().startswith(f"greenbus {args[0]}: the hub refused it: {said}")


def test_a_pub_the_hub_takes_exits_0_in_silence(acl_hub_url: str) -> None:
    run = greenbus("pub", "a.b", '{"t": 21}', "--token", "tok-alice", "--url", acl_hub_url)
    assert run.returncode == 0, run.describe()
    assert run.stderr == ""


def test_serve_refuses_a_token_that_is_no_text_in_one_line_without_showing_it() -> None:
    # Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape).
    run = greenbus("serve", "--port", "0", "--token", "a\udcff")
    assert run.returncode == 1, run.describe()
    assert run.line() == (
        "greenbus serve: invalid token (value not shown): "
        "expected a non-empty string of text, or None"
    ), run.describe()
