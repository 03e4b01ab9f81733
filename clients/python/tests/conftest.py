"""Real taskstream servers (`node bin/taskstream.js serve`) and a TCP proxy that
can cut connections, for the Python client's tests."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


class Server:
    """A `taskstream serve` process on a SQLite file, on a free port of 127.0.0.1."""

    def __init__(self, database: Path, *args: str):
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the tests run a real taskstream server and need node on PATH")
        # The server's own settings come from these flags alone.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
        self.process = subprocess.Popen(
            [node, str(ROOT / "bin" / "taskstream.js"), "serve", "--port", "0", "--database", str(database), "--shutdown-drain-ms", "0", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )
        for line in self.process.stdout:
            entry = json.loads(line)
            if entry.get("msg") == "taskstream listening":
                self.url = entry["url"]
                self.address = self.url.removeprefix("http://")
                break
        else:
            raise RuntimeError(f"taskstream exited with {self.process.wait()} before listening")
        # Keep reading its log so that a full pipe never blocks it.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Proxy:
    """Forwards TCP connections to `upstream` (settable), and can cut every one open."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        # Cleared while stalled: connections stay open, no byte passes.
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            try:
                server = socket.create_connection((host, int(port)))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [])
                self._flowing.wait()  # while stalled, what arrived waits unread
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)
        except (OSError, ValueError):
            pass  # cut() closed the sockets under this thread
        finally:
            self._close(a, b)

    def _close(self, *sockets: socket.socket) -> None:
        with self._lock:
            for s in sockets:
                self._open.discard(s)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        """Closes every connection open through the proxy, as a network fault would."""
        with self._lock:
            sockets = list(self._open)
        self._close(*sockets)

    def stall(self) -> None:
        """Passes no more bytes either way, keeping every connection open, as a
        network dropping packets does, until :meth:`resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        """Delivers what waited while stalled, and passes bytes again."""
        self._flowing.set()

    def close(self) -> None:
        self._listener.close()
        self.cut()
        self.resume()  # so that no pipe thread waits for good


@pytest.fixture
def start_server(tmp_path):
    servers: list[Server] = []

    def start(*args: str, database: Path | None = None) -> Server:
        server = Server(database or tmp_path / "taskstream.db", *args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def proxy():
    proxies: list[Proxy] = []

    def make(upstream: str) -> Proxy:
        p = Proxy(upstream)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        p.close()
