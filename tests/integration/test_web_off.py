"""CAMELEER_WEB_PORT=0 turns the HTTP endpoints off: the worker
starts, merges, and listens on no port at all."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from .harness import consume_until, event, for_key, produce


@pytest.fixture(scope="module")
def worker_env():
    return {"CAMELEER_WEB_PORT": "0"}


def listening_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state on sockets the process holds (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_web_port_0_starts_without_web_server_and_merges(bootstrap, topics, worker):
    assert worker.alive and worker.web_port == 0
    log = worker.log_path.read_text(errors="replace")
    assert "out of range" not in log
    eid = f"exec-{uuid.uuid4()}"
    produce(
        bootstrap,
        topics.raw,
        [
            (eid.encode(), event(eid, "RUNNING", route_id="orders")),
            (eid.encode(), event(eid, "COMPLETED", duration_ms=4)),
        ],
    )
    [out] = for_key(consume_until(bootstrap, topics.output, lambda rs: bool(for_key(rs, eid))), eid)
    assert out.origin == "merged" and out.json["route_id"] == "orders"
    assert listening_ports(worker.process.pid) == set()
    assert worker.alive


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_listening_ports_sees_a_listening_socket():
    """The check above can fail: a process that listens is seen listening."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert port in listening_ports(os.getpid())
