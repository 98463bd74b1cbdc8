"""An S3 store rides out a store restart, and says in one line when the store is gone.

A real S3 server (moto) sits behind a TCP proxy that the tests stop and start again on the
same port: what a client sees while MinIO restarts (connections refused), with the data kept.
"""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import InvalidArgument, StoreUnavailable
from services.common.store import RetryPolicy, S3Store, open_store
from tests.conftest import S3_ACCESS, S3_SECRET, free_port

#: What MinIO answers while it starts: a 503 with an S3 error document.
NOT_READY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s")
NOT_READY_BODY = b"<Error><Code>XMinioServerNotInitialized</Code><Message>Server not initialized, please try again.</Message></Error>"


class Proxy:
    """Forwards loopback TCP connections on `port` to `target`; stop() refuses new ones and
    cuts the open ones, start() listens again on the same port. While `not_ready` > 0, a
    connection is answered 503 (MinIO starting up) instead, and `not_ready` counts down."""

    def __init__(self, target: str):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.not_ready = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            if self.not_ready > 0:
                self.not_ready -= 1
                client.recv(65536)  # the request head
                client.sendall(NOT_READY % (len(NOT_READY_BODY), NOT_READY_BODY))
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture()
def proxy(s3_endpoint: str) -> Any:
    p = Proxy(s3_endpoint)
    p.start()
    yield p
    p.stop()


def test_a_store_restart_mid_operation_is_retried_until_it_answers(proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    store = S3Store("retry-test", f"127.0.0.1:{proxy.port}", S3_ACCESS, S3_SECRET, retry=RetryPolicy(total_seconds=60, base_delay=0.1, max_delay=0.5))
    store.put_bytes("before/restart.txt", b"kept across the restart")
    proxy.stop()  # MinIO goes down ...
    outcome: dict[str, Any] = {}
    retried = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "unreachable" in record.getMessage():
                retried.set()

    watch = Watch(level=logging.INFO)
    store_log = logging.getLogger("services.common.store")
    store_log.addHandler(watch)
    previous_level = store_log.level
    store_log.setLevel(logging.INFO)

    def work() -> None:
        try:
            store.put_bytes("during/restart.txt", b"written while the store was down")
            outcome["read"] = store.get_bytes("before/restart.txt")
        except Exception as exc:  # noqa: BLE001  (reported below)
            outcome["error"] = exc

    worker = threading.Thread(target=work)
    try:
        worker.start()
        assert retried.wait(timeout=30), "the put never found the store down"
        proxy.start()  # ... and comes back on the same address
        worker.join(timeout=60)
    finally:
        store_log.removeHandler(watch)
        store_log.setLevel(previous_level)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["read"] == b"kept across the restart"
    assert store.get_bytes("during/restart.txt") == b"written while the store was down"


def test_an_unreachable_store_is_one_line_naming_the_endpoint_and_setting(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    closed = free_port()  # nothing listens here
    monkeypatch.setenv("SYNTHAUG_S3_ACCESS_KEY", S3_ACCESS)
    monkeypatch.setenv("SYNTHAUG_S3_SECRET_KEY", S3_SECRET)
    monkeypatch.setenv("SYNTHAUG_STORE_RETRY_SECONDS", "1")
    url = f"s3://synthaug?endpoint=127.0.0.1:{closed}&secure=0"
    assert main(["status", "--store", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"synthaug: failed: object store 127.0.0.1:{closed} unreachable (")
    assert "Connection refused" in err
    assert "SYNTHAUG_STORE / --store" in err and "SYNTHAUG_STORE_RETRY_SECONDS=1" in err


def test_retry_budget_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"SYNTHAUG_S3_ACCESS_KEY": S3_ACCESS, "SYNTHAUG_S3_SECRET_KEY": S3_SECRET, "SYNTHAUG_STORE_RETRY_SECONDS": "soon"}
    with pytest.raises(InvalidArgument, match="SYNTHAUG_STORE_RETRY_SECONDS='soon'"):
        open_store(f"s3://b?endpoint=127.0.0.1:{free_port()}", env)
    assert RetryPolicy().total_seconds >= 60  # a MinIO restart takes seconds; a run must not fail for it
    with pytest.raises(StoreUnavailable):
        open_store(f"s3://synthaug?endpoint=127.0.0.1:{free_port()}", {**env, "SYNTHAUG_STORE_RETRY_SECONDS": "0"})


def test_a_store_that_answers_503_while_starting_is_retried(proxy: Proxy) -> None:
    store = S3Store("retry-503", f"127.0.0.1:{proxy.port}", S3_ACCESS, S3_SECRET, retry=RetryPolicy(total_seconds=60, base_delay=0.05, max_delay=0.2))
    store.put_bytes("k", b"v")
    proxy.not_ready = 3
    assert store.get_bytes("k") == b"v"
    assert proxy.not_ready == 0  # all three 503s were seen and retried past
