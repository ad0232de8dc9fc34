"""`study`: the command line. Thin: parse, call the library, map errors to exit codes.

Exit status: 0 success, 1 a run failure (a trial errored, or an unexpected crash),
2 bad input (one line naming the file/flag, the key and the rule; ``--debug`` for a traceback),
130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from pathlib import Path

from core.errors import DiskFull, UserError, is_disk_full, one_line
from core.layout import (
    EXPERIMENT_STATE_GLOB,
    RESULTS_DIR,
    SCORECARD_FILE,
    SPEC_FILE,
    TUNER_FILE,
    results_dir,
    trials_path,
)
from core.status import FINISHED, UNFINISHED

DEFAULT_STORAGE = os.environ.get("STUDY_STORAGE", "studies")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage; keep it to one line + exit 2
        hint = "study --help" if self.prog == "study" else f"{self.prog} --help"
        self.exit(2, f"study: error: {message} (see {hint})\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="study", description="Hyperparameter studies on Ray Tune (see README.md).")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run (or resume) a study from a search-space YAML")
    r.add_argument("spec", help="search-space YAML, e.g. search_spaces/quickstart.yaml")
    r.add_argument("--name", help="study name (default: the spec's name)")
    r.add_argument("--storage", default=DEFAULT_STORAGE, help="results root directory (default: %(default)s)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key by dotted path, e.g. --set fixed.epochs=2 (repeatable)")  # fmt: skip
    r.add_argument("--smoke", action="store_true", help="tiny version: one seed, one epoch, few configs, small data")
    r.add_argument("--address", help="Ray cluster address (e.g. auto on a cluster head); default: local Ray")
    r.add_argument("--no-report", action="store_true", help="skip the HTML report at the end")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    v = sub.add_parser("validate", help="check search-space YAML files without running them")
    v.add_argument("specs", nargs="+")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--models", action="store_true", help="list each distinct model: shaping keys, parameters, FLOPs")
    v.add_argument("--json", action="store_true", help="with --models or --cost: print JSON instead of lines")
    v.add_argument("--cost", action="store_true",
                   help="estimate wall time per trial and for the study (a few timed steps of each model)")  # fmt: skip
    v.add_argument("--cost-gpu", metavar="NAME", help="with --cost: from the measured table of GPU NAME (e.g. H200)")
    v.add_argument("--cost-gpus", type=float, default=1, metavar="N", help="with --cost-gpu: number of GPUs")
    v.add_argument("--cost-cpus", type=float, default=None, metavar="N",
                   help="with --cost: cluster CPUs (default: this machine's, or the GPU table's)")  # fmt: skip
    v.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    ls = sub.add_parser("ls", help="list studies with trial counts by status")
    ls.add_argument("--storage", default=DEFAULT_STORAGE)
    ls.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    st = sub.add_parser("status", help="one study's trial counts and where its results are")
    st.add_argument("name")
    st.add_argument("--storage", default=DEFAULT_STORAGE)
    st.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    rep = sub.add_parser("report", help="(re)build a study's tables and HTML report")
    rep.add_argument("name")
    rep.add_argument("--storage", default=DEFAULT_STORAGE)
    rep.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    cmp_ = sub.add_parser("compare", help="one report comparing several studies")
    cmp_.add_argument("names", nargs="+")
    cmp_.add_argument("--storage", default=DEFAULT_STORAGE)
    cmp_.add_argument("--out", default=None, help="HTML file (default: STORAGE/compare-A-B.html)")
    cmp_.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sc = sub.add_parser("scorecard", help="claims and paper numbers with verdicts over every study in a storage")
    sc.add_argument("--storage", default=DEFAULT_STORAGE)
    sc.add_argument("--out", default=None, help="HTML file (default: STORAGE/scorecard.html)")
    sc.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sv = sub.add_parser("serve", help="a live, read-only web explorer over every study in a storage")
    sv.add_argument("--storage", default=DEFAULT_STORAGE)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, loopback only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    sv.add_argument("--allow-remote", action="store_true",
                    help="allow a non-loopback --host; every request then needs the token printed at start")  # fmt: skip
    sv.add_argument("--open", action="store_true", help="open the explorer in a web browser")
    sv.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sb = sub.add_parser("submit", help="submit a study to a Ray cluster through the Ray Jobs API")
    sb.add_argument("spec")
    sb.add_argument(
        "--address", default="http://127.0.0.1:8265", help="Ray dashboard/jobs address (default: %(default)s)"
    )
    sb.add_argument("--name")
    sb.add_argument("--storage", default=None, help="results root on the cluster (e.g. s3://bucket/studies)")
    sb.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sb.add_argument("--smoke", action="store_true")
    sb.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def study_dir(storage: str, name: str) -> Path:
    """A study's local directory (for shared storage, a fresh local mirror of it)."""
    from study.storage import Store

    store = Store.open(storage)
    not_a_dir_name = "/" in name or name in ("", ".", "..") or len(name.encode()) > 255
    if not_a_dir_name or store.read_text(name, SPEC_FILE) is None:
        raise UserError(
            f"{store.study_path(name)}: no study named {name!r} under {storage} (see `study ls --storage {storage}`)"
        )
    return store.pull(name)


def study_containing(path: Path) -> Path | None:
    """The study directory `path` is in (a directory with spec.yaml, Tune's tuner.pkl or an experiment
    state, or any directory below one), None when it is in none."""
    for d in [path, *path.parents]:
        if (d / SPEC_FILE).is_file() or (d / TUNER_FILE).is_file() or any(d.glob(EXPERIMENT_STATE_GLOB)):
            return d
    return None


def push_results(storage: str, name: str) -> None:
    from study.storage import Store

    Store.open(storage).push(name, RESULTS_DIR)


def _os_error_line(e: OSError) -> str:
    where = e.filename or "storage"
    return f"{where}: cannot be written ({e.strerror or e}); the storage is read-only or not yours: use --storage DIR you can write"


def cmd_run(a: argparse.Namespace) -> int:
    from study.lock import refuse_if_running

    refuse_if_running(a.spec, a.name, a.storage, a.overrides)  # in a second, before torch is imported
    from study.run.orchestrate import run_study

    outcome = run_study(
        a.spec, name=a.name, storage=a.storage, overrides=a.overrides, smoke=a.smoke, address=a.address,
        report=not a.no_report,
    )  # fmt: skip
    return 1 if outcome.failed else 0


def cmd_validate(a: argparse.Namespace) -> int:
    import json

    from study.spec.grid import collapse_note
    from study.spec.load import load_spec
    from study.trackers.settings import check_installed

    if a.json and not (a.models or a.cost):
        raise UserError("--json: only with --models or --cost")
    if (a.cost_gpu or a.cost_cpus is not None) and not a.cost:
        raise UserError("--cost-gpu / --cost-cpus: only with --cost")
    if a.json and a.models and a.cost:
        raise UserError("--json: with one of --models and --cost, not both")
    listed: list[dict] = []
    for path in a.specs:
        spec = load_spec(path, a.overrides)
        check_installed(spec.log_to, path)
        if not a.json:
            print(f"{path}: ok ({spec.trainable}, {spec.n_trials()} trials, metric {spec.metric} {spec.mode})")
            note = collapse_note(spec)
            if note:
                print(f"{path}: {note}")
        if a.models:
            from study.models import describe_models, format_models

            models = describe_models(spec)
            if a.json:
                listed += [{"spec": str(path), **m} for m in models]
            else:
                print(f"  {len(models)} distinct model(s) ({spec.trainable}):")
                print("\n".join(format_models(models)))
        if a.cost:
            from study.cost import estimate, format_estimate

            est = estimate(spec, cpus=a.cost_cpus, gpu=a.cost_gpu, gpus=a.cost_gpus)
            if a.json:
                listed.append({"spec": str(path), **est})
            else:
                print("\n".join(format_estimate(est)))
    if a.json:
        print(json.dumps(listed, indent=1))
    return 0


def cmd_ls(a: argparse.Namespace) -> int:
    from study.results.counts import format_counts, list_studies

    studies = list_studies(a.storage)
    if not studies:
        print(f"no studies under {a.storage}")
    for s in studies:  # a broken study is listed and marked, the others as usual
        print(f"{s['name']:<32} {'BROKEN: ' + s['error'] if s['error'] else format_counts(s['counts'])}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from study.lock import holder_of
    from study.results.counts import format_counts, study_counts
    from study.storage import Store

    d = study_dir(a.storage, a.name)
    counts = study_counts(d)
    print(f"{a.name}: {format_counts(counts)}")
    holder = holder_of(Store.open(a.storage), a.name)
    if holder:
        print(f"being run by `study run` on host {holder.get('host')}, pid {holder.get('pid')}, "
              f"since {holder.get('started')}")  # fmt: skip
    elif any(counts.get(s) for s in UNFINISHED):
        print("unfinished trials: if no `study run` is running this study, run it again to resume them")
    if counts.get("MISSING"):
        print(f"{counts['MISSING']} finished trial(s) have missing data (trial directory deleted?): marked MISSING")
    print(f"results: {results_dir(d)}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from study.results.counts import format_counts
    from study.results.facts import write_facts
    from study.results.tables import collect, write_results
    from study.run.orchestrate import write_report
    from study.spec.load import load_spec

    d = study_dir(a.storage, a.name)
    spec = load_spec(d / SPEC_FILE)
    trials, epochs = collect(d, spec, parallel=True)
    try:
        write_results(d, spec, trials, epochs)
        write_facts(d, spec.trainable)  # an older study gets its study.json (fast `ls` and `status`)
        counts = trials["status"].value_counts().to_dict() if len(trials) else {}
        unfinished = {k: v for k, v in counts.items() if k not in (FINISHED, "DIVERGED")}
        if unfinished:
            print(f"{a.name}: partial results ({format_counts(counts)})")
        write_report(d)
        push_results(a.storage, a.name)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise UserError(
                f"{e.filename or results_dir(d)}: cannot write the report ({e.strerror}): the storage is read-only "
                f"here; copy the study to a writable directory and run `study report {a.name} --storage DIR`"
            ) from None
        raise
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from analysis.report import write_comparison

    if len(set(a.names)) != len(a.names):
        raise UserError(f"compare {' '.join(a.names)}: a study is named twice")
    dirs = [study_dir(a.storage, n) for n in a.names]
    if a.out is None and "://" in a.storage:
        raise UserError(f"--storage {a.storage}: with shared storage give --out FILE for the comparison page")
    out = Path(a.out) if a.out else Path(a.storage).expanduser() / f"compare-{'-'.join(a.names)}.html"
    check_page_out(out, "comparison", "compare.html")
    print(f"comparison: {write_comparison(dirs, out)}")
    return 0


def check_page_out(out: Path, what: str, example: str) -> None:
    """--out of a page written across studies (compare, scorecard): an .html file in an existing
    directory that is not inside any study (a study's files are never replaced by such a page)."""
    if out.is_dir() or not out.parent.is_dir():
        raise UserError(f"--out {out}: must be a file path in an existing directory")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out}: must be an .html file (the {what} page), e.g. --out {example}")
    inside = study_containing(out.resolve().parent)
    if inside is not None:
        raise UserError(f"--out {out}: is inside the study directory {inside}; a {what} never writes into a "
                        "study: give a path outside it")  # fmt: skip


def cmd_scorecard(a: argparse.Namespace) -> int:
    from analysis.report import write_scorecard
    from study.results.tables import collect, write_results
    from study.spec.load import load_spec
    from study.storage import Store

    store = Store.open(a.storage)
    if a.out is None and "://" in a.storage:
        raise UserError(f"--storage {a.storage}: with shared storage give --out FILE for the scorecard")
    out = Path(a.out) if a.out else Path(a.storage).expanduser() / SCORECARD_FILE
    check_page_out(out, "scorecard", "scorecard.html")
    dirs = []
    for name in store.names():
        d = store.pull(name)
        if not trials_path(d).is_file():  # a mirror of shared storage: tables from the state
            try:
                spec = load_spec(d / SPEC_FILE)
                write_results(d, spec, *collect(d, spec, parallel=True))
            except UserError:
                pass  # no readable spec or results: the scorecard lists it as left out
        dirs.append(d)
    html, parquet = write_scorecard(dirs, out, storage=a.storage)
    print(f"scorecard: {html} ({len(dirs)} studies; table {parquet})")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from study.serve import serve

    return serve(a.storage, host=a.host, port=a.port, open_browser=a.open, allow_remote=a.allow_remote)


def cmd_submit(a: argparse.Namespace) -> int:
    from study.submit import submit

    job_id = submit(
        Path(a.spec), address=a.address, name=a.name, storage=a.storage, overrides=a.overrides, smoke=a.smoke
    )
    print(f"submitted job {job_id} to {a.address}")
    print(f"follow it: ray job logs --address {a.address} --follow {job_id}")
    return 0


COMMANDS = {
    "run": cmd_run, "validate": cmd_validate, "ls": cmd_ls, "status": cmd_status, "report": cmd_report,
    "compare": cmd_compare, "submit": cmd_submit, "scorecard": cmd_scorecard, "serve": cmd_serve,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"study: error: {one_line(e)}", file=sys.stderr)
        return 2
    except DiskFull as e:  # the run stopped and saved its state: resumable once space is freed
        if args.debug:
            traceback.print_exc()
        print(f"study: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        from study.run.stop import Terminated

        if isinstance(e, Terminated):
            print("study: terminated (SIGTERM); run the same command again to resume", file=sys.stderr)
            return 143
        print("study: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: one line unless --debug
        if args.debug:
            traceback.print_exc()
        if is_disk_full(e):
            print(f"study: error: {e.filename or 'storage'}: no space left on device; free some space and run the "
                  "same command again", file=sys.stderr)  # fmt: skip
            return 1
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):  # storage not writable
            print(f"study: error: {one_line(_os_error_line(e))}", file=sys.stderr)
            return 2
        if not args.debug:
            print(f"study: run failed: {type(e).__name__}: {one_line(e, 500)} (rerun with --debug for the traceback)",
                  file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
