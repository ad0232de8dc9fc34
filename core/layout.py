"""The study directory: every file name the platform writes or reads, declared once.

    STORAGE/                       a local directory or an object-store URI (study.storage)
      scorecard.html, scorecard.parquet      `study scorecard` (default --out)
      NAME/                        one study
        spec.yaml                  the resolved spec the study was started from
        spec_file.txt              the path of the YAML file it was started from
        study.json                 facts of its family the readers need without it (epochs default, metrics)
        .study.lock                held by the running `study run` (host, pid, heartbeat)
        tuner.pkl, experiment_state-*.json   Ray Tune's own state (read as JSON, never unpickled)
        <trial dirs>/result.json   one JSON line per reported epoch (Ray Tune)
        <trial dirs>/pack.jsonl    a packed trial's per-member rows
        results/
          trials.parquet           one row per trial (schema metadata b"study": the study's description)
          epochs.parquet           one row per (trial, epoch)
          summary.parquet          one row per configuration: mean, CI over seeds
          report.html              the self-contained report
"""

from __future__ import annotations

from pathlib import Path

SPEC_FILE = "spec.yaml"
SPEC_SOURCE_FILE = "spec_file.txt"
FACTS_FILE = "study.json"  # written by `study run` and `study report`: read by `study ls` and `status`
LOCK_FILE = ".study.lock"
RESULTS_DIR = "results"
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
SUMMARY_FILE = "summary.parquet"
REPORT_FILE = "report.html"
SCORECARD_FILE = "scorecard.html"
SCORECARD_TABLE = "scorecard.parquet"
TUNER_FILE = "tuner.pkl"
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"
RESULT_FILE = "result.json"
PACK_ROWS_FILE = "pack.jsonl"
PARQUET_STUDY_KEY = b"study"  # trials.parquet schema metadata: the study's description as JSON


def results_dir(study_dir: Path) -> Path:
    """``STUDY/results``."""
    return Path(study_dir) / RESULTS_DIR


def trials_path(study_dir: Path) -> Path:
    return results_dir(study_dir) / TRIALS_FILE


def epochs_path(study_dir: Path) -> Path:
    return results_dir(study_dir) / EPOCHS_FILE


def summary_path(study_dir: Path) -> Path:
    return results_dir(study_dir) / SUMMARY_FILE


def report_path(study_dir: Path) -> Path:
    return results_dir(study_dir) / REPORT_FILE
