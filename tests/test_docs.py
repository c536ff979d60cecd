"""The README's code runs as written, so the README stays true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_the_readme_ten_line_example_runs_and_prints_what_it_says() -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "the README lost its Python example"
    proc = subprocess.run(
        [sys.executable, "-c", blocks[0]], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["sensors.room1.temp 21.5", "42"]


def test_the_readme_port_line_imports() -> None:
    blocks = python_blocks(ROOT / "README.md")
    port = next(b for b in blocks if "greenbus.compat" in b)
    proc = subprocess.run([sys.executable, "-c", port], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_readme_remote_example_runs_against_a_real_hub() -> None:
    block = next(b for b in python_blocks(ROOT / "README.md") if "greenbus.connect" in b)
    hub = subprocess.Popen(
        [sys.executable, "-m", "greenbus", "serve", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert hub.stdout is not None
        line = hub.stdout.readline()
        url = re.search(r"ws://\S+", line)
        assert url, f"the hub did not print its URL: {line!r}"
        code = block.replace("ws://127.0.0.1:8765/", url.group())
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["hi"]
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=10)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
        if hub.stdout is not None:
            hub.stdout.close()


def test_every_hub_metric_is_documented_in_the_protocol_reference() -> None:
    import greenbus
    from greenbus import HubServer

    hub = HubServer(greenbus.Bus("docs"), stats_interval=None)
    try:
        names = set(re.findall(r"^# HELP (greenbus_\w+) ", hub.metrics(), re.M))
    finally:
        hub.bus.close()
    documented = set(re.findall(r"`(greenbus_\w+)", (ROOT / "docs/protocol.md").read_text()))
    assert len(names) > 10
    assert names - documented == set()


def test_every_greenbus_serve_option_is_documented() -> None:
    from greenbus.cli import build_parser

    parser = build_parser()
    serve = next(
        action.choices["serve"]
        for action in parser._actions
        if getattr(action, "choices", None) and "serve" in action.choices
    )
    options = {
        opt for action in serve._actions for opt in action.option_strings if opt.startswith("--")
    } - {"--help"}
    docs = "".join(
        p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    assert len(options) > 10
    assert sorted(o for o in options if f"`{o}" not in docs and f" {o}" not in docs) == []
