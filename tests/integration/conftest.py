"""Fixtures of the integration tests: a real broker, real worker processes.

The broker is started once per test session from Kafka's own jars (localkafka)
on a free loopback port and stopped at the end, even when tests fail. Set
CAMELEER_TEST_BOOTSTRAP to use a running broker instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

import localkafka
from chaos.processes import Topics, WorkerProcess

from .harness import create_topic

_INSTALL_SELECTED = False  # is a test of test_installed.py in this session?


def pytest_collection_modifyitems(config, items) -> None:
    global _INSTALL_SELECTED
    _INSTALL_SELECTED = any(
        item.nodeid.startswith("tests/integration/test_installed.py") for item in items
    )


@pytest.fixture(scope="session", autouse=True)
def image_install(tmp_path_factory) -> Iterator[Future | None]:
    """The package installed as the container image installs it (test_installed.py),
    started in a thread at the session's start when that module's tests are selected."""
    if not _INSTALL_SELECTED:
        yield None
        return
    from .test_installed import install_like_the_image

    with ThreadPoolExecutor(1, thread_name_prefix="image-install") as pool:
        yield pool.submit(install_like_the_image, tmp_path_factory.mktemp("image"))


# Terminals that wait for the re-key topic's progress (terminal-only records, the
# barriers' sentinels) go out one to two sweeps after it is known: the test workers
# sweep four times a second, so that a barrier costs a fraction of a second.
os.environ.setdefault("CAMELEER_SWEEP_INTERVAL", "0.25")


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("CAMELEER_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    data = tmp_path_factory.mktemp("kafka")
    broker = localkafka.start(data_dir=data, heap=os.environ.get("KAFKA_HEAP", "512m"))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def topics(bootstrap) -> Topics:
    """Fresh topic names (and app id) per test module, so modules never see each other."""
    run = uuid.uuid4().hex[:8]
    names = Topics(
        raw=f"raw-{run}",
        output=f"out-{run}",
        dlq=f"dlq-{run}",
        agents=f"agents-{run}",
        app_id=f"merger-{run}",
    )
    create_topic(bootstrap, names.raw, partitions=3)
    return names


@pytest.fixture(scope="module")
def worker_env() -> dict[str, str]:
    """Extra environment of the module's worker; a test module overrides it."""
    return {}


@pytest.fixture(scope="module")
def worker(bootstrap, topics, worker_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    """One worker process for the module, started with its real command."""
    state = Path(tmp_path_factory.mktemp("state"))
    proc = WorkerProcess(bootstrap, topics, state, extra_env=worker_env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
