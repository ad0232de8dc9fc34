"""Submit a study to a remote Ray cluster through the Ray Jobs API (`study submit`).

The project directory is uploaded as the job's working_dir and `study run SPEC --address
auto` runs on the cluster's head node, where results go to --storage or, by default, the
head's STUDY_STORAGE (set in cluster.yaml). The Jobs API is the dashboard port (8265),
which cluster.yaml keeps on the head's loopback: reach it with `ray dashboard cluster.yaml`
(an SSH port-forward) and submit to http://127.0.0.1:8265.

Token authentication: a cluster started with RAY_AUTH_MODE=token (cluster.yaml does)
answers 401 unless the client runs with RAY_AUTH_MODE=token and finds the cluster's token
in RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from core.errors import UserError
from study.spec.load import load_spec
from study.spec.model import check_name

# Not uploaded with the project (Ray also skips what .gitignore lists).
UPLOAD_EXCLUDES = [
    ".venv",
    "studies",
    ".git",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "benchmarks/results",
]
# Seconds to wait for the Jobs API to answer the first request (connect, read).
PREFLIGHT_TIMEOUT_S = (5.0, 30.0)
TUNNEL_HINT = "is `ray dashboard cluster.yaml` (the SSH tunnel to the head) running?"


def project_root(spec_path: Path) -> Path:
    """The directory uploaded as working_dir: the nearest ancestor of the spec holding a
    pyproject.toml (this repository), else the current directory."""
    spec = Path(spec_path).resolve()
    for parent in spec.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd().resolve()


def build_entrypoint(
    spec_relpath: str, *, name: str | None, storage: str | None, overrides: list[str], smoke: bool
) -> str:
    """The shell command the job runs on the head node, in the uploaded project directory."""
    args = ["study", "run", spec_relpath, "--address", "auto"]
    if name:
        args += ["--name", name]
    if storage:
        args += ["--storage", storage]
    for override in overrides:
        args += ["--set", override]
    if smoke:
        args.append("--smoke")
    return shlex.join(args)


def submit(
    spec_path: Path, *, address: str, name: str | None, storage: str | None, overrides: list[str], smoke: bool
) -> str:
    """Upload the project and start `study run SPEC --address auto ...` as a Ray job; returns the job id."""
    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise UserError(f"{spec_path}: no such search-space file")
    root = project_root(spec_path)
    try:
        relpath = spec_path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise UserError(
            f"{spec_path}: outside the project directory {root} that is uploaded to the cluster; "
            "move the spec under it (e.g. search_spaces/)"
        ) from None
    load_spec(spec_path, overrides)  # a bad spec fails here, in seconds, not in the job on the cluster
    if name is not None:
        check_name(name, "--name")
    entrypoint = build_entrypoint(relpath, name=name, storage=storage, overrides=overrides, smoke=smoke)
    return submit_entrypoint(address, entrypoint, working_dir=root)


def submit_entrypoint(address: str, entrypoint: str, *, working_dir: Path) -> str:
    """Submit any shell command as a Ray job with working_dir uploaded; returns the job id."""
    client = _client(address)
    runtime_env = {"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES}
    return _call(address, client.submit_job, entrypoint=entrypoint, runtime_env=runtime_env)


def job_status(address: str, job_id: str) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    client = _client(address)
    return str(_call(address, client.get_job_status, job_id).value)


def _client(address: str) -> Any:
    """A JobSubmissionClient for an http(s) dashboard address, after a bounded reachability check."""
    if not address.startswith(("http://", "https://")):
        raise UserError(
            f"--address {address}: expected the Ray dashboard URL, e.g. http://127.0.0.1:8265 "
            "(`study run --address auto` is for a shell on the head node)"
        )
    _preflight(address.rstrip("/"))
    from ray.job_submission import JobSubmissionClient

    return _call(address, JobSubmissionClient, address)


def _preflight(address: str) -> None:
    # JobSubmissionClient sends requests without a timeout: a port that accepts but never
    # answers would hang it forever. This public endpoint also tells us the auth mode.
    import requests

    url = f"{address}/api/authentication_mode"
    try:
        reply = requests.get(url, timeout=PREFLIGHT_TIMEOUT_S)
    except requests.exceptions.Timeout:
        raise UserError(f"--address {address}: no answer from the Ray Jobs API within timeout; {TUNNEL_HINT}") from None
    except requests.exceptions.RequestException as e:
        raise UserError(f"--address {address}: cannot reach the Ray Jobs API ({_reason(e)}); {TUNNEL_HINT}") from None
    if reply.status_code == 404:
        return  # an older Ray without token auth: nothing to check
    if reply.status_code != 200:
        raise UserError(
            f"--address {address}: not a Ray dashboard (GET /api/authentication_mode gave HTTP {reply.status_code})"
        )
    try:
        server_mode = str(reply.json().get("authentication_mode", "")).lower()
    except ValueError:
        raise UserError(f"--address {address}: not a Ray dashboard (non-JSON answer from {url})") from None
    if server_mode == "token" and not _client_token_mode():
        raise UserError(
            f"--address {address}: the cluster requires its auth token; run with RAY_AUTH_MODE=token and the token "
            "in ~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it)"
        )


def _client_token_mode() -> bool:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    return is_token_auth_enabled()


def _call(address: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a Jobs API call; map its failures to one-line UserErrors naming the address."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError:
        raise UserError(
            f"--address {address}: the cluster rejected the auth token; use the cluster's token "
            "(~/.ray/auth_token synced by cluster.yaml, or RAY_AUTH_TOKEN) with RAY_AUTH_MODE=token"
        ) from None
    except ConnectionError as e:
        raise UserError(f"--address {address}: cannot reach the Ray Jobs API ({_reason(e)}); {TUNNEL_HINT}") from None
    except (RuntimeError, ValueError) as e:  # HTTP error status, version mismatch, package too large
        raise UserError(f"--address {address}: job request failed ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first if len(first) <= 200 else first[:197] + "..."
