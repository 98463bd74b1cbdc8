"""Fixtures shared by every test: stores (file and a real S3 server), free ports, data paths."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from services.common.store import FileStore, ObjectStore, S3Store

REPO = Path(__file__).resolve().parent.parent
ISIC = Path(os.environ.get("SYNTHAUG_ISIC", REPO.parent / "shared" / "data" / "isic2018-256"))

S3_ACCESS = "synthaug-test"
S3_SECRET = "synthaug-test-secret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 server (moto's standalone server) on a free loopback port."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server not installed: pip install 'moto[server]' (the dev extra)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}")
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto_server did not start within 30 s")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture()
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials in the environment (as in a pod); returns the store URL of a fresh bucket."""
    monkeypatch.setenv("SYNTHAUG_S3_ACCESS_KEY", S3_ACCESS)
    monkeypatch.setenv("SYNTHAUG_S3_SECRET_KEY", S3_SECRET)
    return f"s3://test-{uuid.uuid4().hex[:12]}?endpoint={s3_endpoint}&secure=0"


@pytest.fixture()
def s3_store(s3_endpoint: str) -> S3Store:
    return S3Store(f"test-{uuid.uuid4().hex[:12]}", s3_endpoint, S3_ACCESS, S3_SECRET, secure=False)


@pytest.fixture()
def file_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Both backends: every test using it runs twice."""
    if request.param == "file":
        return FileStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


@pytest.fixture(scope="session")
def isic_root() -> Path:
    if not (ISIC / "train" / "images").is_dir():
        pytest.skip(f"real data not present at {ISIC}")
    return ISIC


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test, as each of CI's two cores runs one test process's
    work: small models train faster and, more to the point, reproducibly (a reduction's
    order can depend on the thread count). Tests of torch code opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`; torch is imported here, not
    at the top, so the torch-free tests never load it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
