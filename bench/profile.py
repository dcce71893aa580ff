"""Optional (`--profile`): py-spy samples the worker under load; the report lists the
functions of the worker's main thread that hold it busiest (inclusive share)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from .common import say

INTERESTING = ("app/", "faust/", "aiokafka/", "rocksdict", "orjson", "selectors.py")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profile:
    """py-spy record of one pid for `seconds`, in a thread; `.hot` once joined."""

    def __init__(self, pid: int, out: Path, seconds: float = 20.0) -> None:
        self.pid, self.out, self.seconds = pid, out, seconds
        self.hot: list[tuple[float, str]] = []
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="py-spy", daemon=True)

    def start(self) -> Profile:
        self.thread.start()
        return self

    def _run(self) -> None:
        exe = py_spy()
        if exe is None:
            self.error = "py-spy is not installed (.venv/bin/pip install py-spy)"
            return
        say(f"profiling the worker (pid {self.pid}) with py-spy for {self.seconds:.0f}s")
        cmd = [exe, "record", "--pid", str(self.pid), "--duration", str(int(self.seconds))]
        proc = subprocess.run(
            [*cmd, "--idle", "--format", "raw", "-o", str(self.out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not self.out.exists():
            self.error = (proc.stderr or proc.stdout).strip()[-300:]
            return
        self.hot = summarize(self.out)

    def join(self) -> None:
        self.thread.join(self.seconds + 30)


def summarize(raw: Path, top: int = 15) -> list[tuple[float, str]]:
    """Inclusive share of the main thread's samples per interesting frame."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or frames[0].startswith("Thread."):  # helper threads: not the loop
            continue
        count = int(n)
        total += count
        for frame in set(frames):
            if any(s in frame for s in INTERESTING):
                inclusive[frame] += count
    if not total:
        return []
    hot = [(round(100.0 * v / total, 1), f) for f, v in inclusive.most_common()]
    # frames on every stack (the CLI, the event loop) say nothing: leave them out
    return [(pct, f) for pct, f in hot if pct < 95.0][:top]
