"""Running a study on Ray Tune (the running side; `study.results` is the reading side).

- `study.run.orchestrate`: `run_study` (lock, trials, tables, report), `StudyRun`, `RunOutcome`;
- `study.run.tuner`: the trainable, `to_param_space` (the one place where a spec becomes Ray Tune
  domains) and the `Tuner`, new or restored;
- `study.run.shapes`: packed (``pack``) and data-parallel (``resources.workers``) trials;
- `study.run.callbacks`: progress lines, checkpoint pruning, the free-space guard;
- `study.run.resume`: the recorded spec, complete studies, state repair, checkpoint pruning;
- `study.run.stop`: `StopRequest` (SIGTERM, a full disk, a failed restore) and `Terminated`;
- `study.run.cluster`: local Ray or a cluster, checked in seconds;
- `study.run.disk`: the free-space rules;
- `study.run.reaper`: the watcher that ends a run's local Ray processes with it (also after kill -9).

``study.runner`` re-exports the names it has always had.
"""
