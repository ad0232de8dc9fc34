"""`study serve`: a live, read-only web explorer over every study in a storage.

A Starlette app: HTML pages (Jinja2, autoescape on) that draw themselves from a small JSON API
under ``/api/``, Plotly.js served from the installed ``plotly`` package. Read-only: GET and HEAD
only (anything else is 405), nothing in the storage is written or locked, nothing unpickled.
Every response carries a strict Content-Security-Policy (no inline script, nothing from another
origin). Bound to loopback by default; on any other address every request needs the token printed
at start (``?token=...`` once, then a cookie), else 403.

Routes: ``/`` (index), ``/study/{name}``, ``/study/{name}/trial/{trial_id}``, ``/compare?studies=a,b``,
``/scorecard``, ``/study/{name}/report.html`` (the static report, downloaded); the API:
``/api/studies``, ``/api/study/{name}`` (summary, polled), ``/api/study/{name}/report``,
``/api/study/{name}/trials``, ``/api/study/{name}/trial/{trial_id}``, ``/api/study/{name}/epochs?trials=``,
``/api/study/{name}/table/{table}.{csv|parquet}``, ``/api/compare?studies=``, ``/api/scorecard``,
``/api/scorecard/table.{csv|parquet}``.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from core.errors import UserError, one_line
from core.layout import REPORT_FILE, results_dir
from study.serve import views
from study.serve.catalog import Catalog, NotFound, inside

HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "study_serve_token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)  # plotly.js sets inline styles on its elements and injects a <style> element: 'unsafe-inline' for styles only
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
MAX_COMPARE = 8  # studies on one comparison page
MAX_CURVE_TRIALS = 50  # trials whose curves one request returns


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: GET/HEAD only, the token when one is set, loopback Host names when bound to
    loopback (a page of another site cannot reach the explorer by DNS rebinding), security headers."""

    def __init__(self, app: Any, *, token: str | None, loopback: bool) -> None:
        self.app, self.token, self.loopback = app, token, loopback

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["method"] not in ("GET", "HEAD"):
            return await self._reply(scope, receive, send, 405, "read-only: only GET and HEAD", [(b"allow", b"GET, HEAD")])
        if self.loopback:
            host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").startswith("[") else "[::1]"
            if host not in LOOPBACK_NAMES:
                return await self._reply(scope, receive, send, 403, "forbidden: this explorer answers on loopback only")
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0]
            if given and hmac.compare_digest(given, self.token):  # once in the URL: then a cookie, URL cleaned
                rest = {k: v for k, v in query.items() if k != "token"}
                location = scope["path"] + (f"?{urlencode(rest, doseq=True)}" if rest else "")
                cookie = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                extra = [(b"location", location.encode()), (b"set-cookie", cookie.encode())]
                return await self._reply(scope, receive, send, 303, "", extra)
            jar = SimpleCookie()
            try:
                jar.load(headers.get("cookie", ""))
            except Exception:  # noqa: BLE001 - a malformed cookie header is no token
                jar = SimpleCookie()
            cookie = jar[TOKEN_COOKIE].value if TOKEN_COOKIE in jar else ""
            auth = headers.get("authorization", "")
            bearer = auth.split(" ", 1)[1] if auth.lower().startswith(("token ", "bearer ")) else ""
            if not any(v and hmac.compare_digest(v, self.token) for v in (cookie, bearer)):
                return await self._reply(scope, receive, send, 403, "forbidden: open the URL with ?token=... printed by `study serve`")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        return await self.app(scope, receive, send_with_headers)

    async def _reply(self, scope, receive, send, status: int, text: str, extra: list | None = None) -> None:
        response = PlainTextResponse(text, status_code=status, headers={k.decode(): v.decode() for k, v in extra or []})
        response.raw_headers += SECURITY_HEADERS
        await response(scope, receive, send)


class Reports:
    """The report part of each study page, built for a snapshot version. The first request builds
    it and waits; later ones get the last one built at once while a newer one is built beside (one
    at a time, in a daemon thread, at most every `REBUILD_EVERY` x the last build's time), so a
    refresh never waits on the figures of a large study."""

    REBUILD_EVERY = 3.0  # a new build starts no sooner than this many build times after the last one
    REBUILD_MIN_S = 2.0

    def __init__(self) -> None:
        self._done: dict[str, tuple[str, dict, dict]] = {}
        self._building: set[str] = set()
        self._finished: dict[str, tuple[float, float]] = {}  # name -> (when, seconds it took)
        self._lock = threading.Lock()

    def latest(self, name: str) -> tuple[str, dict, dict] | None:
        return self._done.get(name)

    def get(self, live: Any, snap: Any, *, wait: bool) -> tuple[str, dict, dict] | None:
        done = self._done.get(live.name)
        if done and done[0] == snap.version:
            return done
        if done is None and wait:
            return self._build(live, snap)
        with self._lock:
            when, took = self._finished.get(live.name, (0.0, 0.0))
            due = time.monotonic() >= when + max(self.REBUILD_MIN_S, self.REBUILD_EVERY * took)
            if live.name not in self._building and due:
                self._building.add(live.name)
                threading.Thread(target=self._background, args=(live,), daemon=True,
                                 name=f"study-serve-report-{live.name}").start()  # fmt: skip
        return done

    def _background(self, live: Any) -> None:
        try:
            self._build(live, live.snapshot())
        except Exception:  # noqa: BLE001 - the next request builds it again and shows the error
            pass
        finally:
            with self._lock:
                self._building.discard(live.name)

    def _build(self, live: Any, snap: Any) -> tuple[str, dict, dict]:
        t0 = time.monotonic()
        results = live.results()
        payload, tables = views.study_report(results, live.name)
        live.claims = tables.get("claims")
        entry = (snap.version, payload, tables)
        self._done[live.name] = entry
        self._finished[live.name] = (time.monotonic(), time.monotonic() - t0)
        return entry

    def close(self) -> None:
        pass


def _json(payload: Any, status: int = 200, headers: dict | None = None) -> Response:
    from plotly.utils import PlotlyJSONEncoder

    body = json.dumps(payload, cls=PlotlyJSONEncoder, allow_nan=False, separators=(",", ":"))
    return Response(body, status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store", **(headers or {})})  # fmt: skip


def _error(status: int, message: str) -> Response:
    return _json({"error": one_line(message, 500)}, status)


def create_app(storage: str | Path, *, token: str | None = None, loopback: bool = True) -> Any:
    """The explorer app over `storage` (`UserError` when it does not exist). `token`: required on
    every request (set for a non-loopback bind); `loopback`: only loopback Host names accepted."""
    catalog = Catalog(storage)
    reports = Reports()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
    templates = Jinja2Templates(env=env)  # autoescape on: every string from a study is escaped

    def page(request: Request, template: str, **context: Any) -> Response:
        return templates.TemplateResponse(request, template, {"storage": catalog.storage, **context})

    def live_or_404(name: str) -> Any:
        return catalog.study(name)

    # -- pages

    def index(request: Request) -> Response:
        return page(request, "index.html")

    def study_page(request: Request) -> Response:
        name = request.path_params["name"]
        live_or_404(name)
        return page(request, "study.html", name=name)

    def trial_page(request: Request) -> Response:
        name, tid = request.path_params["name"], request.path_params["trial_id"]
        live_or_404(name)
        return page(request, "trial.html", name=name, trial_id=tid)

    def compare_page(request: Request) -> Response:
        return page(request, "compare.html", studies=request.query_params.get("studies", ""), names=catalog.names())

    def scorecard_page(request: Request) -> Response:
        return page(request, "scorecard.html")

    def static_report(request: Request) -> Response:
        live = live_or_404(request.path_params["name"])
        path = results_dir(live.dir) / REPORT_FILE
        if not path.is_file() or not inside(path, live.dir):
            raise NotFound(f"{path}: no report yet (run `study report {live.name}`)")
        return FileResponse(path, filename=f"{live.name}-report.html", content_disposition_type="attachment")

    def report_css(request: Request) -> Response:
        from analysis.html import CSS

        return Response(CSS, media_type="text/css", headers={"cache-control": "max-age=3600"})

    def plotly_js(request: Request) -> Response:
        import plotly

        path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        return FileResponse(path, media_type="text/javascript", headers={"cache-control": "max-age=86400"})

    # -- the API

    def api_studies(request: Request) -> Response:
        return _json(catalog.index())

    def summary(live: Any, snap: Any) -> dict[str, Any]:
        """The study's index row, its counts from this snapshot (what the trials table says)."""
        from study.serve.catalog import _row

        row = catalog.index_row(live.name)
        done = reports.latest(live.name)
        if done is not None and done[0] != snap.version and not snap.error:
            reports.get(live, snap, wait=False)  # a newer report is built in the background
        if not snap.error:
            row = {**row, **{k: v for k, v in _row(live.name, counts=snap.counts, total=snap.total).items()
                             if k in ("status", "trials_done", "trials_running", "trials_failed", "trials_total")}}  # fmt: skip
        return {**row, "version": snap.version, "counts": snap.counts if not snap.error else row["counts"],
                "error": snap.error or row["error"], "notes": snap.notes,
                "report_version": done[0] if done else None}  # fmt: skip

    def api_study(request: Request) -> Response:
        live = live_or_404(request.path_params["name"])
        return _json(summary(live, live.snapshot()))

    def api_report(request: Request) -> Response:
        live = live_or_404(request.path_params["name"])
        snap = live.snapshot()
        if snap.error:
            return _error(409, snap.error)
        try:
            entry = reports.get(live, snap, wait=True) or reports.latest(live.name)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - results the report functions cannot take: one line, the rest works
            return _error(500, f"{live.name}: the report cannot be built from these results ({type(e).__name__}: {e})")
        version, payload, _ = entry
        return _json({**payload, "version": version, "stale": version != snap.version})

    trials_cache: dict[str, tuple[str, bytes]] = {}

    def api_trials(request: Request) -> Response:
        live = live_or_404(request.path_params["name"])
        snap = live.snapshot()
        etag = f'"{snap.version}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"etag": etag, "cache-control": "no-cache"})
        cached = trials_cache.get(live.name)
        if cached is None or cached[0] != snap.version:
            columns = list(dict.fromkeys(k for r in snap.rows for k in r))
            searched = tuple(k for k in (live.spec().space if not snap.error else {}) if k in columns)
            head = json.dumps({"version": snap.version, "error": snap.error, "searched": list(searched),
                               "columns": columns})  # fmt: skip
            with live.lock:
                rows = ",".join(live.row_json(r["trial_id"], searched) for r in snap.rows)
            cached = trials_cache[live.name] = (snap.version, f'{head[:-1]},"rows":[{rows}]}}'.encode())
        return Response(cached[1], media_type="application/json", headers={"etag": etag, "cache-control": "no-cache"})

    def trial_checkpoints(live: Any, trial_id: str) -> list[dict]:
        trial_dir = live.trial_dir(trial_id)
        if trial_dir is None or not trial_dir.is_dir() or not inside(trial_dir, live.dir):
            return []
        out = []
        for p in sorted(trial_dir.iterdir()):
            if p.name.startswith("checkpoint_") and p.is_dir() and not p.is_symlink():
                files = [f for f in p.rglob("*") if f.is_file() and not f.is_symlink()]
                out.append({"name": p.name, "files": len(files), "bytes": sum(f.stat().st_size for f in files)})
        return out

    def api_trial(request: Request) -> Response:
        live = live_or_404(request.path_params["name"])
        tid = request.path_params["trial_id"]
        snap = live.snapshot()
        data = views.trial_page(live, snap, tid, trial_checkpoints(live, tid)) if not snap.error else None
        if data is None:
            raise NotFound(f"no trial {tid!r} in study {live.name!r}")
        return _json({"study": live.name, **data})

    def api_epochs(request: Request) -> Response:
        live = live_or_404(request.path_params["name"])
        live.snapshot()
        wanted = [t for t in request.query_params.get("trials", "").split(",") if t][:MAX_CURVE_TRIALS]
        out = {}
        for tid in wanted:
            s = live.summary(tid)
            if s is not None:
                out[tid] = {"epoch": list(s.epochs), **{m: views._floats(v) for m, v in s.metrics.items()}}
        return _json({"trials": out})

    def table_frame(live: Any, table: str) -> pd.DataFrame:
        snap = live.snapshot()
        if snap.error:
            raise UserError(snap.error)
        if table == "trials":
            return snap.trials
        if table == "epochs":
            return live.epochs()
        entry = reports.get(live, snap, wait=True) or reports.latest(live.name)
        return entry[2][table]

    def download(frame: pd.DataFrame, stem: str, fmt: str) -> Response:
        if fmt == "csv":
            return Response(frame.to_csv(index=False), media_type="text/csv",
                            headers={"content-disposition": f'attachment; filename="{stem}.csv"'})  # fmt: skip
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(_mixed(frame), preserve_index=False), buf)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet",
                        headers={"content-disposition": f'attachment; filename="{stem}.parquet"'})  # fmt: skip

    def api_table(request: Request) -> Response:
        live = live_or_404(request.path_params["name"])
        table, fmt = request.path_params["table"], request.path_params["fmt"]
        if table not in views.TABLES or fmt not in ("csv", "parquet"):
            raise NotFound(f"no table {table}.{fmt} (tables: {', '.join(views.TABLES)}; csv or parquet)")
        return download(table_frame(live, table), f"{_safe_stem(live.name)}-{table}", fmt)

    def loaded_studies(names: list[str]) -> tuple[list[tuple[str, Any]], list[str]]:
        loaded, skipped = [], []
        for n in names:
            try:
                live = catalog.study(n)
                snap = live.snapshot()
                if snap.error or not snap.rows:
                    skipped.append(n)
                    continue
                loaded.append((n, live.results()))
            except Exception:  # noqa: BLE001 - left out and named, as `study scorecard` does
                skipped.append(n)
        return loaded, skipped

    def api_compare(request: Request) -> Response:
        names = [n for n in request.query_params.get("studies", "").split(",") if n]
        if len(names) < 1 or len(names) > MAX_COMPARE or len(set(names)) != len(names):
            return _error(400, f"studies=: give 1 to {MAX_COMPARE} distinct study names, comma-separated")
        for n in names:
            catalog.study(n)  # 404 for an unknown one
        loaded, skipped = loaded_studies(names)
        if not loaded:
            return _error(409, f"no results yet in {', '.join(names)}")
        return _json({**views.compare_page(loaded), "skipped": skipped})

    scorecard_cache: dict[str, Any] = {}

    def scorecard() -> tuple[dict, pd.DataFrame]:
        names = catalog.names()
        loaded, skipped = loaded_studies(names)
        key = tuple((n, catalog.study(n)._snapshot.version) for n, _ in loaded), tuple(skipped)
        if scorecard_cache.get("key") != key:
            scorecard_cache["value"] = views.scorecard_page(loaded, skipped, catalog.storage)
            scorecard_cache["key"] = key
        return scorecard_cache["value"]

    def api_scorecard(request: Request) -> Response:
        payload, table = scorecard()
        return _json({**payload, "rows": views.records(table)})

    def api_scorecard_table(request: Request) -> Response:
        fmt = request.path_params["fmt"]
        if fmt not in ("csv", "parquet"):
            raise NotFound("scorecard table: csv or parquet")
        return download(scorecard()[1], "scorecard", fmt)

    # -- errors

    async def not_found(request: Request, exc: Exception) -> Response:
        message = str(exc) if isinstance(exc, NotFound) else "not found"
        if request.url.path.startswith("/api/"):
            return _error(404, message)
        return templates.TemplateResponse(request, "error.html", {"message": message, "storage": catalog.storage},
                                          status_code=404)  # fmt: skip

    async def user_error(request: Request, exc: Exception) -> Response:
        return _error(409, str(exc))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("read-only: only GET and HEAD", status_code=405, headers={"allow": "GET, HEAD"})

    name = "{name}"
    routes = [
        Route("/", index),
        Route(f"/study/{name}", study_page),
        Route(f"/study/{name}/report.html", static_report),
        Route(f"/study/{name}/trial/{{trial_id}}", trial_page),
        Route("/compare", compare_page),
        Route("/scorecard", scorecard_page),
        Route("/api/studies", api_studies),
        Route(f"/api/study/{name}", api_study),
        Route(f"/api/study/{name}/report", api_report),
        Route(f"/api/study/{name}/trials", api_trials),
        Route(f"/api/study/{name}/trial/{{trial_id}}", api_trial),
        Route(f"/api/study/{name}/epochs", api_epochs),
        Route(f"/api/study/{name}/table/{{table}}.{{fmt}}", api_table),
        Route("/api/compare", api_compare),
        Route("/api/scorecard", api_scorecard),
        Route("/api/scorecard/table.{fmt}", api_scorecard_table),
        Route("/static/report.css", report_css),
        Route("/static/plotly.min.js", plotly_js),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, NotFound: not_found, UserError: user_error, 405: method_not_allowed},
        lifespan=_lifespan(catalog, reports),
    )
    app.state.catalog, app.state.reports = catalog, reports
    return Guard(app, token=token, loopback=loopback)


def _lifespan(catalog: Catalog, reports: Reports) -> Any:
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        try:
            yield
        finally:
            reports.close()
            catalog.close()

    return lifespan


def _safe_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "study"


def _mixed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing types become text (Parquet holds one type per column)."""
    frame = frame.copy()
    for c in frame.columns:
        if frame[c].dtype == object:
            types = {type(v) for v in frame[c] if v is not None and v == v}
            if len(types) > 1 and not types <= {int, float, bool}:
                frame[c] = [None if v is None else str(v) for v in frame[c]]
    return frame


def serve(storage: str, *, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False,
          allow_remote: bool = False) -> int:  # fmt: skip
    """Run the explorer until interrupted (``study serve``). A non-loopback `host` needs
    `allow_remote` and then a token on every request, printed here with the URL."""
    import secrets
    import socket
    import sys

    loopback = is_loopback(host)
    if not loopback and not allow_remote:
        raise UserError(
            f"--host {host}: not a loopback address; the explorer would show every study in the storage to "
            "anyone who can reach this port: add --allow-remote to mean it (every request then needs the "
            "token printed at start), or keep the default 127.0.0.1 and use a tunnel (see docs/guide/explorer.md)"
        )
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: must be between 1 and 65535")
    token = None if loopback else secrets.token_urlsafe(24)
    app = create_app(storage, token=token, loopback=loopback)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a taken port is one line, not a uvicorn log
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                            "try another --port") from None  # fmt: skip
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"study serve: the studies in {storage}, read-only, at {url}", flush=True)
    if token:
        print("study serve: every request needs that token (once in the URL, then a cookie); keep it private",
              flush=True)  # fmt: skip
    print("study serve: press Ctrl+C to stop", file=sys.stderr, flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    import uvicorn

    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning", access_log=False, lifespan="on")
    return 0
