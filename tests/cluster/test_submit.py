"""study.submit against bad addresses (no Ray needed) and a real local head whose Jobs API
listens on 127.0.0.1 with token authentication on, as cluster.yaml configures it."""

from __future__ import annotations

import http.server
import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from study import submit as submit_mod
from study.errors import UserError
from study.submit import build_entrypoint, job_status, submit
from tests.conftest import write_spec

REPO = Path(__file__).resolve().parents[2]


# --- pure ---------------------------------------------------------------------------


def test_entrypoint_runs_the_study_on_the_head() -> None:
    cmd = build_entrypoint(
        "search_spaces/my spec.yaml", name="s1", storage="s3://b/studies", overrides=["a.b=1", "c=x y"], smoke=True
    )
    assert cmd == (
        "study run 'search_spaces/my spec.yaml' --address auto --name s1 --storage s3://b/studies "
        "--set a.b=1 --set 'c=x y' --smoke"
    )
    assert build_entrypoint("x.yaml", name=None, storage=None, overrides=[], smoke=False) == (
        "study run x.yaml --address auto"
    )


def test_submit_uploads_the_project_and_names_the_spec_relative_to_it(monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    spec = tmp_path / "search_spaces" / "s.yaml"
    spec.parent.mkdir()
    write_spec(spec, name="s")
    seen = {}
    monkeypatch.setattr(submit_mod, "submit_entrypoint", lambda a, e, working_dir: seen.update(a=a, e=e, w=working_dir))
    submit(spec, address="http://127.0.0.1:8265", name=None, storage=None, overrides=[], smoke=False)
    assert seen == {"a": "http://127.0.0.1:8265", "e": "study run search_spaces/s.yaml --address auto", "w": tmp_path}


def test_missing_spec_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such search-space file"):
        submit(
            tmp_path / "nope.yaml", address="http://127.0.0.1:8265", name=None, storage=None, overrides=[], smoke=False
        )


def test_bad_spec_fails_before_contacting_the_cluster(monkeypatch) -> None:
    monkeypatch.setattr(submit_mod, "submit_entrypoint", lambda *a, **k: pytest.fail("submitted a bad spec"))
    spec = REPO / "search_spaces" / "quickstart.yaml"
    with pytest.raises(UserError, match=r"quickstart\.yaml: fixed\.lr: Input should be greater than 0 \(got -1\)"):
        submit(spec, address="http://127.0.0.1:8265", name=None, storage=None, overrides=["fixed.lr=-1"], smoke=False)
    with pytest.raises(UserError, match="--name 'a/b': must be 1-100 letters"):
        submit(spec, address="http://127.0.0.1:8265", name="a/b", storage=None, overrides=[], smoke=False)


@pytest.mark.parametrize("address", ["127.0.0.1:8265", "auto", "ray://127.0.0.1:10001"])
def test_address_must_be_the_dashboard_url(address: str) -> None:
    spec = REPO / "search_spaces" / "quickstart.yaml"
    with pytest.raises(UserError, match=r"expected the Ray dashboard URL, e.g. http://127.0.0.1:8265"):
        submit(spec, address=address, name=None, storage=None, overrides=[], smoke=False)


# --- unreachable / wrong servers (loopback only) ---------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the with-block ends: connections are refused


def test_refused_address_fails_fast_naming_it() -> None:
    address = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        job_status(address, "raysubmit_x")
    assert time.monotonic() - start < 5
    assert str(e.value).startswith(f"--address {address}: cannot reach the Ray Jobs API")
    assert "ray dashboard cluster.yaml" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts TCP connections and never answers (a hung tunnel or wrong service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_silent_address_times_out(monkeypatch, silent_port: int) -> None:
    monkeypatch.setattr(submit_mod, "PREFLIGHT_TIMEOUT_S", (0.5, 0.5))
    with pytest.raises(UserError, match="no answer from the Ray Jobs API"):
        job_status(f"http://127.0.0.1:{silent_port}", "raysubmit_x")


class _NotRay(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        code = 404 if "authentication_mode" in self.path or "version" in self.path else 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"<html>not ray</html>")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def not_ray_url() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotRay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_bad_response_is_a_user_error(not_ray_url: str) -> None:
    with pytest.raises(UserError, match=rf"^--address {not_ray_url}: job request failed \(Version check returned 404"):
        job_status(not_ray_url, "raysubmit_x")


# --- a real head with token auth ---------------------------------------------------------

# Runs the client in a fresh process: Ray reads RAY_AUTH_MODE once per process.
CLIENT = """
import json, sys, time
from pathlib import Path
from study.errors import UserError
from study.submit import job_status, submit_entrypoint
address, workdir = sys.argv[1:3]
try:
    job = submit_entrypoint(address, sys.argv[3], working_dir=Path(workdir))
    deadline = time.monotonic() + 45
    status = job_status(address, job)
    while status not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = job_status(address, job)
    try:
        job_status(address, "raysubmit_doesnotexist")
        unknown = "no error"
    except UserError as e:
        unknown = str(e)
    print(json.dumps({"job": job, "status": status, "unknown": unknown}))
except UserError as e:
    print(json.dumps({"error": str(e)}))
"""

# What the job checks on the head: it runs in the uploaded project, without the excluded
# directories, and inherits the head's environment (how STUDY_STORAGE reaches `study run`).
JOB = (
    "python -c \"import os; assert os.path.isfile('study/submit.py') and not os.path.exists('.venv'); "
    "assert os.environ['RAY_TMPDIR']; print('job ok')\""
)


@pytest.fixture(scope="module")
def token_head(module_cluster_factory):
    return module_cluster_factory(num_workers=0, dashboard=True, auth_token=secrets.token_hex(32))


def _client(head, **env: str) -> dict:
    full_env = {**head.env, **env}
    for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        full_env.pop(var, None)
    full_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, head.dashboard_url, str(REPO), JOB],
        env=full_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.cluster
def test_token_cluster_refuses_a_client_without_token_mode(token_head) -> None:
    result = _client(token_head, RAY_AUTH_MODE="disabled")
    assert result["error"].startswith(f"--address {token_head.dashboard_url}: the cluster requires its auth token")


@pytest.mark.cluster
def test_token_cluster_rejects_a_wrong_token(token_head) -> None:
    result = _client(token_head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    assert result["error"].startswith(f"--address {token_head.dashboard_url}: the cluster rejected the auth token")


@pytest.mark.cluster
def test_job_runs_with_the_right_token(token_head) -> None:
    result = _client(token_head, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token_head.auth_token)
    assert result["job"].startswith("raysubmit_")
    assert result["status"] == "SUCCEEDED"
    assert result["unknown"].startswith(f"--address {token_head.dashboard_url}: job request failed")
    assert "does not exist" in result["unknown"]
