"""Fixtures: synthetic studies written to disk in the runner's format (results/*.parquet, spec.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from analysis.load import StudyResults, study_meta
from analysis.synthetic import SyntheticStudy, digit_pairs_study, share_split_study


def write_study(study_dir: Path, study: SyntheticStudy) -> Path:
    """Write `study` as the runner would: trials.parquet (with b"study" metadata), epochs.parquet, spec.yaml."""
    results = study_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(study.trials, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"study": json.dumps(study.metadata).encode()}
    )
    pq.write_table(table, results / "trials.parquet")
    pq.write_table(pa.Table.from_pandas(study.epochs, preserve_index=False), results / "epochs.parquet")
    (study_dir / "spec.yaml").write_text(yaml.safe_dump(study.spec, sort_keys=False))
    return study_dir


def results_of(study: SyntheticStudy) -> StudyResults:
    """The study as `analysis.load.load_study` would return it, without the disk."""
    return StudyResults(study_meta(study.metadata, study.spec, study.trials), study.trials, study.epochs)


@pytest.fixture(scope="session")
def digit_study() -> SyntheticStudy:
    """A small digit-pair grid (4 nets x 5 lr x 4 batch sizes x 3 seeds), some trials failed."""
    return digit_pairs_study(repeats=3, epochs=6)


@pytest.fixture(scope="session")
def size_study() -> SyntheticStudy:
    """The share/split training-size sweep with a crossover."""
    return share_split_study(repeats=3, epochs=5)


@pytest.fixture(scope="session")
def digit_results(digit_study: SyntheticStudy) -> StudyResults:
    return results_of(digit_study)


@pytest.fixture(scope="session")
def size_results(size_study: SyntheticStudy) -> StudyResults:
    return results_of(size_study)


@pytest.fixture(name="write_study")
def write_study_fixture():
    """`write_study` as a fixture, for tests that build their own study."""
    return write_study


@pytest.fixture
def digit_dir(tmp_path: Path, digit_study: SyntheticStudy) -> Path:
    return write_study(tmp_path / "digits", digit_study)
