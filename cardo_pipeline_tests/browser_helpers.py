"""`dagster dev` for a test, and headless Chromium driven over the DevTools protocol for pages where a person has
to click before they see something (the Dagster UI shows markdown metadata behind a "[Show Markdown]" link).
Debian's chromium and websocket-client (in the lock already, through the Kubernetes client) are all it needs."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import websocket

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One headless Chromium with one page; `evaluate` runs JavaScript in it and returns the value."""

    def __init__(self, profile_dir: Path, width: int = 1600, height: int = 2000) -> None:
        binary = shutil.which("chromium")
        assert binary, "Debian's chromium is missing: `make deps` installs it"
        port = _free_port()
        self._process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--window-size={width},{height}",
             f"--remote-debugging-port={port}", "--remote-allow-origins=*", f"--user-data-dir={profile_dir}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError("chromium's DevTools endpoint did not come up")
            time.sleep(0.3)
        self._socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60)
        self._ids = itertools.count(1)

    def _call(self, method: str, **params) -> dict:
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def open(self, url: str) -> None:
        self._call("Page.enable")
        self._call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self._call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60) -> object:
        """Poll a JavaScript expression until it is truthy (the React app renders after its GraphQL calls)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self._call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        sock = getattr(self, "_socket", None)
        if sock is not None:
            sock.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def dagster_dev(dagster_home: Path, env: dict[str, str], log_path: Path):
    """`dagster dev -w workspace.yaml` on a free port with `dagster_home` as its instance; yields its URL."""
    from cardo_pipeline.settings import ensure_dagster_home

    port = _free_port()
    ensure_dagster_home(dagster_home)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(port)],
            cwd=PROJECT_ROOT, env={**env, "DAGSTER_HOME": str(dagster_home)}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # dagster dev spawns a code server and a daemon: stop the whole group
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"dagster dev did not serve: {log_path.read_text()[-2000:]}") from None
                    time.sleep(1)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
