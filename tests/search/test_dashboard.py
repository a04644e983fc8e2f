"""`evomerge dashboard` really serves a study made by `evomerge search` (over loopback HTTP)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

from evomerge.search.run import optimise, prepare
from evomerge.search.study import SearchSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dashboard_serves_the_study(search_parents, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    settings = SearchSettings(
        parents=[str(search_parents["instruct"]), str(search_parents["child"])],
        benchmarks=[str(search_parents["benchmark"])],
        base=str(search_parents["instruct"]),
        trials=3,
        study="served",
        storage=url,
        protocol="loglik",
        device="cpu",
    )
    optimise(prepare(settings))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "evomerge.cli", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        deadline = time.time() + 60
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the dashboard did not answer on loopback"
        summaries = body["study_summaries"]
        assert [summary["study_name"] for summary in summaries] == ["served"]
        assert summaries[0]["directions"] == ["maximize"]
    finally:
        server.terminate()
        server.wait(timeout=10)
