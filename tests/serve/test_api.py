"""`study serve`'s JSON API and pages, in-process (Starlette's TestClient), on studies in Tune's
layout: a complete one, a running one that grows between requests, damaged ones and hostile strings.
The storage must be byte-for-byte the same after serving."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from starlette.testclient import TestClient

from study.serve import create_app
from tests.serve.conftest import grow, tree_hash, write_tune_study

CONTRACT = {"name": str, "trainable": str, "status": str, "trials_done": int, "trials_running": int,
            "trials_failed": int, "trials_total": int, "updated": str}  # fmt: skip
STATUSES = {"running", "complete", "partly failed", "broken", "empty"}


@pytest.fixture
def client(storage: Path):
    with TestClient(create_app(storage), base_url="http://127.0.0.1") as c:
        yield c


def by_name(client: TestClient) -> dict[str, dict]:
    r = client.get("/api/studies")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return {row["name"]: row for row in r.json()}


def test_api_studies_contract_and_states(client: TestClient) -> None:
    rows = by_name(client)
    assert set(rows) == {"done", "live", "truncated", "no-state", "lost-trial", "hostile", "<script>alert(1)",
                         "javascript:alert(3)"}  # fmt: skip
    for row in rows.values():
        for key, kind in CONTRACT.items():
            assert isinstance(row[key], kind), (row["name"], key, row[key])
        dt.datetime.fromisoformat(row["updated"])  # ISO 8601
        assert row["status"] in STATUSES
    live = rows["live"]
    assert live["status"] == "running" and live["trials_running"] == 3 and live["trials_total"] == 8
    assert live["trials_done"] + live["trials_running"] == live["trials_total"]
    assert rows["done"]["status"] in ("complete", "partly failed") and rows["done"]["trials_running"] == 0
    assert rows["done"]["trainable"] == "digit_pairs" and rows["done"]["data_source"] == "mnist-5k"
    assert rows["done"]["best"] is not None and rows["done"]["metric"] == "test_acc"
    # damaged studies are marked on their row, the rest still listed
    assert rows["truncated"]["status"] == "broken" and "not valid JSON" in rows["truncated"]["error"]
    assert rows["no-state"]["status"] == "broken" and "state was deleted" in rows["no-state"]["error"]
    assert rows["<script>alert(1)"]["status"] == "broken"  # its spec fails the name rule
    assert rows["lost-trial"]["counts"].get("MISSING") == 1 and rows["lost-trial"]["status"] == "partly failed"


def test_study_page_report_and_tables(client: TestClient) -> None:
    s = client.get("/api/study/done").json()
    assert s["status"] in ("complete", "partly failed") and s["version"]
    r = client.get("/api/study/done/report")
    assert r.status_code == 200
    rep = r.json()
    assert rep["version"] == s["version"] and not rep["stale"]
    assert {"paper", "claims", "best", "effects", "heatmaps", "curves", "parallel", "importance", "failures"} <= set(
        rep["sections"]
    )
    assert "Study report: done" in rep["header"]
    keys = {f["key"] for f in rep["figures"]}
    assert {"effect-arch", "effect-lr", "parallel", "curves"} <= keys
    parallel = next(f for f in rep["figures"] if f["key"] == "parallel")
    assert parallel["figure"]["layout"]["uirevision"] == "parallel"  # zoom and brush survive Plotly.react
    assert parallel["targets"]["dims"][:2] == ["arch", "lr"]
    trials = client.get("/api/study/done/trials")
    body = trials.json()
    assert len(body["rows"]) == 8 and "_text_arch" in body["rows"][0] and body["searched"] == ["arch", "lr", "batch_size"]
    assert client.get("/api/study/done/trials", headers={"if-none-match": trials.headers["etag"]}).status_code == 304
    for table in ("trials", "epochs", "summary", "best", "paper", "claims", "importance", "curves"):
        csv = client.get(f"/api/study/done/table/{table}.csv")
        assert csv.status_code == 200 and "attachment" in csv.headers["content-disposition"], table
        parquet = client.get(f"/api/study/done/table/{table}.parquet")
        assert parquet.status_code == 200
        frame = pd.read_parquet(io.BytesIO(parquet.content))
        assert len(frame) == len(pd.read_csv(io.StringIO(csv.text))) if csv.text.strip() else True
    assert client.get("/api/study/done/table/nope.csv").status_code == 404
    assert client.get("/api/study/done/table/trials.exe").status_code == 404


def test_trial_page_lists_checkpoints_never_loads_them(client: TestClient, storage: Path) -> None:
    rows = client.get("/api/study/done/trials").json()["rows"]
    row = next(r for r in rows if r["status"] == "TERMINATED")
    ckpt = storage / "done" / f"trial_{row['trial_id']}" / "checkpoint_000002"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"\x80\x04not a pickle anyone should load" * 10)
    r = client.get(f"/api/study/done/trial/{row['trial_id']}")
    assert r.status_code == 200
    d = r.json()
    assert d["trial"]["status"] == "TERMINATED" and d["config"]["arch"] == row["arch"]
    assert d["epochs"]["epoch"] == [1, 2, 3] and len(d["epochs"]["test_acc"]) == 3
    assert d["checkpoints"] == [{"name": "checkpoint_000002", "files": 1, "bytes": 330}]
    failed = next((r for r in rows if r["status"] == "ERROR"), None)
    if failed:
        assert "RuntimeError: synthetic failure" in client.get(f"/api/study/done/trial/{failed['trial_id']}").json()["trial"]["error"]
    assert client.get("/api/study/done/trial/nope").status_code == 404
    page = client.get(f"/study/done/trial/{row['trial_id']}")
    assert page.status_code == 200 and 'src="/static/trial.js"' in page.text


def test_running_study_refreshes_incrementally(client: TestClient, storage: Path) -> None:
    first = client.get("/api/study/live").json()
    report = client.get("/api/study/live/report").json()
    app_live = client.app.app.state.catalog.study("live")
    reads_before = sum(f.reads for f in app_live._files.values())
    assert grow(storage / "live", epochs=4, finish=2) > 0
    second = client.get("/api/study/live").json()
    assert second["version"] != first["version"]
    assert second["trials_done"] == first["trials_done"] + 2 and second["trials_running"] == first["trials_running"] - 2
    appended = sum(f.reads for f in app_live._files.values()) - reads_before
    running = [p for p in (storage / "live").glob("trial_*/result.json")]
    assert appended < sum(p.stat().st_size for p in running) / 2  # only the new lines were read
    # the report is rebuilt in the background: the next polls see its new version (no reload, no fixed sleep)
    deadline = time.monotonic() + 60
    while client.get("/api/study/live").json()["report_version"] != second["version"]:
        assert time.monotonic() < deadline, "the report was not rebuilt"
        time.sleep(0.1)
    again = client.get("/api/study/live/report").json()
    assert again["version"] == second["version"] != report["version"]
    assert not again["stale"]


def test_read_only_methods_refused(client: TestClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/", "/api/studies", "/api/study/done", "/study/done", "/nope"):
            r = client.request(method, path)
            assert r.status_code == 405, (method, path)
            assert r.headers["allow"] == "GET, HEAD"
    assert client.head("/api/studies").status_code == 200


def test_security_headers_on_every_response(client: TestClient) -> None:
    for path in ("/", "/study/done", "/api/studies", "/static/common.js", "/static/plotly.min.js", "/nope",
                 "/api/study/nope"):  # fmt: skip
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp and "unsafe-eval" not in csp, path
        assert r.headers["x-content-type-options"] == "nosniff"
    page = client.get("/study/done").text
    assert "<script>" not in page and "onclick" not in page  # no inline script: every script is a file
    assert client.get("/static/plotly.min.js").content[:20].startswith(b"/**")  # served from the plotly package


def test_hostile_strings_are_escaped(client: TestClient) -> None:
    rep = client.get("/api/study/hostile/report").json()
    assert "<script>alert(2)" not in rep["header"] and "&lt;script&gt;alert(2)" in rep["header"]
    assert "<img src=x" not in json.dumps(rep["sections"])
    rows = by_name(client)
    assert rows["<script>alert(1)"]["status"] == "broken"
    page = client.get("/study/%3Cscript%3Ealert(1)")  # a page for the broken study: the name escaped
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)" in page.text
    js = client.get("/study/javascript:alert(3)")
    assert js.status_code == 200 and 'href="javascript:' not in js.text
    assert 'data-study="javascript:alert(3)"' in js.text


def test_unknown_and_traversing_names_refused(client: TestClient, storage: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_tune_study(outside, "secret")
    os.symlink(outside / "secret", storage / "linked")  # a link out of the storage
    for path in ("/api/study/..", "/api/study/..%2F..%2Fetc", "/api/study/%2e%2e", "/api/study/nope",
                 "/study/..%2Foutside", "/api/study/linked", "/api/study/linked/report", "/study/linked",
                 "/api/study/done/trial/..%2F..%2Fspec.yaml", "/api/study/done/table/..%2Fspec.yaml.csv"):  # fmt: skip
        r = client.get(path)
        assert r.status_code == 404, path
        assert "secret" not in r.text or "linked" in r.text
    assert by_name(client)["linked"]["status"] == "broken"  # listed, marked, never read
    assert "outside the storage" in by_name(client)["linked"]["error"]


def test_storage_unchanged_by_serving(storage: Path) -> None:
    (storage / "done" / "results").mkdir()
    (storage / "done" / "results" / "report.html").write_text("<html>old report</html>")
    before = tree_hash(storage)
    with TestClient(create_app(storage), base_url="http://127.0.0.1") as c:
        names = [r["name"] for r in c.get("/api/studies").json()]
        for n in names:  # every study's cheap endpoints; the report (seconds each) of two
            for path in ("", "/trials", "/table/epochs.parquet", *(("/report", "/table/summary.csv")
                                                                    if n in ("done", "live") else ())):  # fmt: skip
                c.get(f"/api/study/{n}{path}")
            c.get(f"/study/{n}")
        trial = c.get("/api/study/done/trials").json()["rows"][0]["trial_id"]
        c.get(f"/api/study/done/trial/{trial}")
        c.get(f"/api/study/done/epochs?trials={trial}")
        assert c.get("/api/scorecard").status_code == 200
        assert c.get("/api/scorecard/table.parquet").status_code == 200
        assert c.get("/api/compare?studies=done,live").status_code == 200
        report = c.get("/study/done/report.html")
        assert report.status_code == 200 and report.text == "<html>old report</html>"
        assert "attachment" in report.headers["content-disposition"]
    assert tree_hash(storage) == before
    assert not list(storage.rglob(".study.lock"))


def test_compare_and_scorecard(client: TestClient) -> None:
    r = client.get("/api/compare?studies=done,live")
    assert r.status_code == 200
    d = r.json()
    assert d["names"] == ["done", "live"] and "Study comparison: done, live" in d["html"]
    assert "<script" not in d["html"] and d["figures"][0]["key"] == "best-final_test_acc"
    assert client.get("/api/compare?studies=done,done").status_code == 400
    assert client.get("/api/compare?studies=nope").status_code == 404
    sc = client.get("/api/scorecard").json()
    assert "Scorecard" in sc["html"] and "<script" not in sc["html"]
    assert any(row["study"] == "done" for row in sc["rows"])
    assert 'href="./study/done"' in sc["html"]  # relative to /scorecard: /study/done
    assert client.get("/compare?studies=done,live").status_code == 200
    assert client.get("/scorecard").status_code == 200


def test_token_required_off_loopback(storage: Path) -> None:
    app = create_app(storage, token="s3cret-token", loopback=False)
    with TestClient(app, base_url="http://10.0.0.5:8000") as c:
        assert c.get("/api/studies").status_code == 403
        assert c.get("/").status_code == 403
        assert c.get("/api/studies?token=wrong").status_code == 403
        assert c.get("/api/studies", headers={"authorization": "token wrong"}).status_code == 403
        r = c.get("/?token=s3cret-token", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"  # the token leaves the URL
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/api/studies").status_code == 200  # the cookie now
    with TestClient(app, base_url="http://10.0.0.5:8000") as c:
        assert c.get("/api/studies", headers={"authorization": "token s3cret-token"}).status_code == 200


def test_loopback_refuses_other_host_names(storage: Path) -> None:
    with TestClient(create_app(storage), base_url="http://evil.example:8000") as c:
        assert c.get("/api/studies").status_code == 403  # DNS rebinding: a page of another site
    with TestClient(create_app(storage), base_url="http://localhost:8000") as c:
        assert c.get("/api/studies").status_code == 200


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from study.cli import main

    assert main(["serve", "--storage", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    assert main(["serve", "--storage", str(tmp_path), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote" in err and err.count("\n") == 1


def test_index_first_load_marks_unread_rows_reading(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study not read within the first-load wait comes as ``reading``, then with its counts."""
    import threading
    import time

    from study.serve import catalog

    gate = threading.Event()
    original = catalog.Catalog.index_row

    def slow(self, name):  # noqa: ANN001, ANN202
        gate.wait(30)
        return original(self, name)

    monkeypatch.setattr(catalog, "FIRST_LOAD_WAIT_S", 0.05)
    monkeypatch.setattr(catalog.Catalog, "index_row", slow)
    t0 = time.perf_counter()
    rows = by_name(client)
    assert time.perf_counter() - t0 < 5
    assert rows["done"]["status"] == "reading" and rows["done"]["trials_total"] == 0
    gate.set()
    for _ in range(200):
        rows = by_name(client)
        if not any(r["status"] == "reading" for r in rows.values()):
            break
        time.sleep(0.05)
    assert rows["done"]["status"] in ("complete", "partly failed") and rows["live"]["trials_running"] == 3
