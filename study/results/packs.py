"""A packed trial is its members: wherever a study's trials are read (tables, counts, resume checks).

A pack is one Ray Tune trial whose config is ``{"__pack__": {"shared": ..., "members": [...]}}``
(built by `study.run.shapes.pack_param_space`); its ``result.json`` rows carry each member's
metrics under ``members``. `expand_packs` turns it back into one entry per member, so each member
is its own trial to the user.
"""

from __future__ import annotations

from pathlib import Path

from core.layout import RESULT_FILE
from core.safe_read import UnsafeFile, confined, notice
from study.results.state import read_jsonl


def member_count(config: dict) -> int:
    """How many trials a Tune trial with this config is (a pack's members, else 1)."""
    pack = config.get("__pack__") if isinstance(config, dict) else None
    return len(pack["members"]) if isinstance(pack, dict) else 1


def expand_packs(study_dir: Path, entries: list[dict]) -> list[dict]:
    """Trial entries (trial_id, status, config, logdir, meta) with every pack replaced by its
    members: id ``<pack id>-m<i>``, the member's config, and ``rows``: its result rows (its metrics
    from each of the pack's reports, ``time_total_s`` its share of the pack's)."""
    out = []
    for t in entries:
        pack = t["config"].get("__pack__") if isinstance(t.get("config"), dict) else None
        if not isinstance(pack, dict):
            out.append(t)
            continue
        problem = t["meta"].get("problem")
        result = Path(study_dir) / t["logdir"] / RESULT_FILE
        try:
            if not problem and confined(result.parent, result.name) is None:
                raise UnsafeFile(f"{result}: a link leading outside its trial directory: not read")
            rows = [] if problem else read_jsonl(result)
        except UnsafeFile as e:  # a FIFO, a device, too large: the members have no rows, and say why
            rows, problem = [], str(e)
            notice(problem)
        n = len(pack["members"])
        for i, member in enumerate(pack["members"]):
            mine = []
            for r in rows:
                m = (r.get("members") or {}).get(str(i))
                if m is not None:
                    share = r.get("time_total_s")
                    mine.append({**m, "time_total_s": share / n if isinstance(share, (int, float)) else share})
            meta = {**t["meta"], "last_result": mine[-1] if mine else {}, **({"problem": problem} if problem else {})}
            out.append(
                {
                    "trial_id": f"{t['trial_id']}-m{i}",
                    "status": t["status"],
                    "config": {**pack["shared"], **member},
                    "logdir": t["logdir"],
                    "meta": meta,
                    "rows": mine,
                }
            )
    return out
