"""Submit a study to a remote Ray cluster through the Ray Jobs API (`study submit`).

The project directory is uploaded as the job's working_dir and `study run SPEC --address
auto` runs on the cluster's head node, where results go to --storage or, by default, the
head's STUDY_STORAGE (set in cluster.yaml). The Jobs API is the dashboard port (8265),
which cluster.yaml keeps on the head's loopback: reach it with `ray dashboard cluster.yaml`
(an SSH port-forward) and submit to http://127.0.0.1:8265.

What is uploaded is an explicit list, never a whole directory: the project's package directories
(`PROJECT_DIRS`), ``pyproject.toml`` and the spec, copied into a staging directory (regular files
only: no link, no ``__pycache__``) that becomes the job's working_dir; `study submit` prints the
list first. The project is the nearest directory above the spec holding ``pyproject.toml`` and the
``study`` package; a spec outside any such directory is refused (the current directory is never
uploaded: it may be a home directory with keys in it).

Token authentication: a cluster started with RAY_AUTH_MODE=token (cluster.yaml does)
answers 401 unless the client runs with RAY_AUTH_MODE=token and finds the cluster's token
in RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO

from core.errors import UserError
from study.spec.load import load_spec
from study.spec.model import check_name

# What goes to the cluster: these directories of the project (those it has), pyproject.toml, the spec.
PROJECT_DIRS = ("core", "study", "trainables", "analysis", "search_spaces")
PROJECT_FILES = ("pyproject.toml",)
UPLOAD_SKIP = ("__pycache__", ".pytest_cache", ".ruff_cache")  # names left out wherever they are
UPLOAD_EXCLUDES = ["**/__pycache__"]  # kept for scripts that read it; the staging copy has none
# Seconds to wait for the Jobs API to answer the first request (connect, read).
PREFLIGHT_TIMEOUT_S = (5.0, 30.0)
TUNNEL_HINT = "is `ray dashboard cluster.yaml` (the SSH tunnel to the head) running?"


def is_project(directory: Path) -> bool:
    """A checkout of this project: ``pyproject.toml`` and the ``study`` package in it."""
    return (directory / "pyproject.toml").is_file() and (directory / "study" / "__init__.py").is_file()


def project_root(spec_path: Path) -> Path:
    """The project the spec belongs to: the nearest ancestor of the spec holding a pyproject.toml;
    `UserError` when there is none (the current directory is never taken instead)."""
    spec = Path(spec_path).resolve()
    for parent in spec.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise UserError(
        f"{spec_path}: not inside the project (no directory above it holds pyproject.toml): nothing is uploaded; "
        "put the spec under the project's search_spaces/ and submit it from there"
    )


def upload_list(root: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """What `study submit` uploads, relative to the project: its package directories, pyproject.toml and
    `extra` files (a spec outside those directories); `UserError` when `root` is not the project."""
    if not is_project(root):
        raise UserError(
            f"{root}: not the study project (no pyproject.toml with the study/ package next to it): nothing is "
            "uploaded; submit a spec from inside the project checkout"
        )
    items = [f"{d}/" for d in PROJECT_DIRS if (root / d).is_dir()] + [f for f in PROJECT_FILES if (root / f).is_file()]
    return [*items, *(e for e in extra if e not in items)]


def stage(root: Path, items: list[str], target: Path) -> tuple[int, int]:
    """Copy `items` of `root` into `target`: regular files only (a link, a FIFO or a device is left out,
    so nothing outside the project is reached through one); returns (files, bytes)."""
    import shutil

    files = size = 0

    def copy(src: Path, dst: Path) -> None:
        nonlocal files, size
        if src.is_symlink() or not src.is_file():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        files, size = files + 1, size + dst.stat().st_size

    for item in items:
        src = root / item.rstrip("/")
        if src.is_symlink():
            continue
        if not src.is_dir():
            copy(src, target / item)
            continue
        for dirpath, dirnames, filenames in os.walk(src):  # links to directories are not followed
            dirnames[:] = [d for d in dirnames if d not in UPLOAD_SKIP and not Path(dirpath, d).is_symlink()]
            for name in filenames:
                if not name.endswith(".pyc"):
                    path = Path(dirpath, name)
                    copy(path, target / path.relative_to(root))
    return files, size


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
    if relpath.split("/", 1)[0] in PROJECT_DIRS:  # uploaded with its directory
        return submit_entrypoint(address, entrypoint, working_dir=root)
    return submit_entrypoint(address, entrypoint, working_dir=root, extra=(relpath,))


def submit_entrypoint(
    address: str, entrypoint: str, *, working_dir: Path, extra: tuple[str, ...] = (), out: TextIO | None = None
) -> str:
    """Submit a shell command as a Ray job; the job's working_dir holds `upload_list` of the project
    `working_dir` (with `extra` files of it), printed first. Returns the job id."""
    import shutil
    import tempfile

    out = out or sys.stdout
    root = Path(working_dir).resolve()
    items = upload_list(root, extra)
    client = _client(address)
    staging = Path(tempfile.mkdtemp(prefix="study-submit-"))
    try:
        files, size = stage(root, items, staging)
        print(
            f"[study] uploading from {root}: {' '.join(items)} ({files} files, {size / 1e6:.1f} MB)",
            file=out,
            flush=True,
        )
        runtime_env = {"working_dir": str(staging), "excludes": UPLOAD_EXCLUDES}
        return _call(address, client.submit_job, entrypoint=entrypoint, runtime_env=runtime_env)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
