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
