"""The package installed as the container image installs it, run against the broker.

A clean virtualenv (`python3.11 -m venv`), `pip install .` of the files the Dockerfile
copies (pyproject.toml, README.md, app/, simulator/), no extras: the worker must start
from there and merge an execution, which shows its runtime dependencies are complete
without the dev extras. The same worker logs as JSON and serves the process metrics.
The dependencies' wheels are kept in the cache folder (`.cache/wheels/`, by the
hash of pyproject.toml): the first run builds them with `pip wheel` (from PyPI, or
pip's own cache), the next ones install from there without asking the index. The
installation runs in a thread from the session's start (conftest.py, `image_install`)
while the other tests run: it mostly waits on the disk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import localkafka
from chaos.processes import Topics, WorkerProcess

from .harness import consume_until, event, for_key, produce

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
IMAGE_FILES = ("pyproject.toml", "README.md", "app", "simulator")  # the Dockerfile's COPY


def install_like_the_image(folder: Path) -> Path:
    """bin/ of a fresh virtualenv holding the package and its runtime dependencies only."""
    source = folder / "src"
    source.mkdir()
    for name in IMAGE_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    venv = folder / "venv"
    python = shutil.which("python3.11") or sys.executable
    # No pip of its own (the image removes it too): this pip installs into it.
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    pip += ["--disable-pip-version-check", "--quiet"]
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    wheels = localkafka.CACHE_DIR / "wheels" / digest
    if not (wheels / ".complete").exists():
        run([*pip, "wheel", "--wheel-dir", str(wheels), str(source)])
        run([*pip, "download", "--dest", str(wheels), "setuptools>=70.1"])  # the build's
        (wheels / ".complete").touch()
    install = [*pip, "install", "--no-index", "--find-links", str(wheels), "--no-compile"]
    run([*install, str(source)])
    return venv / "bin"


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ...: {done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def installed(image_install) -> Path:
    """The installation conftest started in the background at the session's start."""
    return image_install.result(timeout=600)


def test_installed_package_has_no_dev_extras(installed):
    probe = "import importlib.util as u; print([m for m in ('pytest', 'chdb', 'duckdb', "
    probe += "'matplotlib', 'yaml', 'localkafka') if u.find_spec(m)])"
    out = subprocess.run(
        [str(installed / "python"), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=installed,  # not the checkout, whose folders would be importable
    )
    assert out.stdout.strip() == "[]"


def test_installed_worker_merges_logs_json_and_serves_process_metrics(
    installed, bootstrap, tmp_path
):
    topics = Topics.fresh(uuid.uuid4().hex[:8])  # the raw topic too: the worker creates it
    worker = WorkerProcess(
        bootstrap,
        topics,
        tmp_path / "worker",
        extra_env={"CAMELEER_LOG_FORMAT": "json"},
        command=[str(installed / "cameleer-merger")],
    )
    worker.start()
    try:
        eid = f"exec-{uuid.uuid4()}"
        produce(
            bootstrap,
            topics.raw,
            [
                (eid.encode(), event(eid, "RUNNING", route_id="image", start_time="t0")),
                (eid.encode(), event(eid, "COMPLETED", duration_ms=5)),
            ],
        )
        records = consume_until(bootstrap, topics.output, lambda rs: bool(for_key(rs, eid)))
        [merged] = for_key(records, eid)
        assert merged.origin == "merged" and merged.json["route_id"] == "image"
        url = f"http://127.0.0.1:{worker.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        code = worker.stop()
    assert code == 0  # SIGTERM: committed and stopped
    rss = families["process_resident_memory_bytes"].samples[0].value
    assert 20e6 < rss < 1e9
    assert families["process_open_fds"].samples[0].value > 0
    assert families["process_cpu_seconds"].samples[0].value > 0
    assert "python_gc_objects_collected" in families
    assert "cameleer_output_records" in families
    lines = worker.log_path.read_text(errors="replace").splitlines()
    parsed = [json.loads(line) for line in lines if line.strip()]  # every line: one object
    assert all({"time", "level", "logger", "message"} <= p.keys() for p in parsed)
    assert any(p["message"].endswith("Worker]: Ready") for p in parsed)
