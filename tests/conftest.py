"""Hermetic test environment: no hub, no telemetry, DeepSpeed on CPU (gloo, no JIT-built ops)."""

import os

os.environ.update(
    DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
    GX_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
)

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# `make test` runs two pytest processes (pytest-xdist). Each gets its own Prefect home, so the
# ephemeral Prefect servers of two workers never share one SQLite database, and an equal share of
# the cores, so two torch processes do not each start a thread per core and contend for them.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ppg-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# Models built by tests (tiny; SmolLM2 converted from its GGUF, 517 MB) go to a per-session cache,
# never ~/.cache, and are removed when the session ends.
os.environ["PPG_CACHE"] = tempfile.mkdtemp(prefix="ppg-test-cache-")
atexit.register(shutil.rmtree, os.environ["PPG_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from ppg.models import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server for every flow test of the session (it takes ~10 s to start)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


def pytest_collection_modifyitems(session, config, items):
    """Files with slow tests run first (order kept within a file), so that of two workers neither
    starts a ten-minute file when the other is nearly done."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
