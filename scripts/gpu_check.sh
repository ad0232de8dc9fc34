#!/usr/bin/env bash
# The GPU check, in at most 8 minutes on one large GPU:
#   1. the project installed (an existing .venv that imports it, else a new one: pip install -e '.[test]');
#   2. the GPU test tier (tests/gpu, marker gpu);
#   3. benchmarks/bench_gpu.py: trials per hour of one digit-pair group per trial shape, and the
#      per-step table (images/s, MFU) that `study validate --cost --cost-gpu NAME` reads;
#   results in benchmarks/results/gpu.json, with the tier's counts and the device name.
#
#   scripts/gpu_check.sh            on a GPU machine
#   scripts/gpu_check.sh --dry-run  the same steps at toy sizes on the CPU (no GPU needed):
#                                   benchmarks/results/gpu_dry_run.json, never gpu.json
#
# With $OUT set (a folder that is copied back), the JSON and the logs are copied there too.
set -uo pipefail

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}  # the whole check, seconds
LOGS=$(mktemp -d)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*"; }

# 1. the project
PY=.venv/bin/python
if ! { [ -x "$PY" ] && "$PY" -c "import torch, ray, study.cli, trainables, pytest" 2>/dev/null; }; then
  say "installing the project into .venv"
  python3 -m venv --system-site-packages .venv || exit 2
  timeout "$(left)" "$PY" -m pip install -q -e '.[test]' >"$LOGS/install.log" 2>&1 || {
    tail -20 "$LOGS/install.log"; say "install failed"; exit 2; }
fi
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF

if [ "$DRY" = 1 ]; then
  export STUDY_GPU_TIER_DEVICE=cpu STUDY_GPU_TIER_QUICK=1
  RESULT=benchmarks/results/gpu_dry_run.json
  BENCH_ARGS=(--dry-run)
  TIER_S=${GPU_CHECK_TIER_S:-240}
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device here; use --dry-run"; exit 2
  fi
  RESULT=benchmarks/results/gpu.json
  BENCH_ARGS=()
  TIER_S=${GPU_CHECK_TIER_S:-210}
fi

# 2. the GPU tier
say "GPU tier (tests/gpu), at most ${TIER_S}s"
timeout "$TIER_S" "$PY" -m pytest tests/gpu -q -p no:cacheprovider -m gpu --junitxml="$LOGS/gpu_tier.xml" \
  >"$LOGS/gpu_tier.log" 2>&1
TIER_RC=$?
tail -5 "$LOGS/gpu_tier.log"

# 3. the benchmark, in what time is left (a minute kept for the summary)
BENCH_S=$(( $(left) - 20 ))
say "bench_gpu.py ${BENCH_ARGS[*]:-}, at most ${BENCH_S}s"
timeout "$BENCH_S" "$PY" benchmarks/bench_gpu.py "${BENCH_ARGS[@]}" --out "$LOGS/bench.json" >"$LOGS/bench.log" 2>&1
BENCH_RC=$?
tail -3 "$LOGS/bench.log"

# the tier's counts into the result, which is written only when the benchmark finished
"$PY" - "$LOGS" "$RESULT" "$TIER_RC" "$BENCH_RC" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

logs, result, tier_rc, bench_rc, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tier = {"rc": tier_rc}
try:
    suite = ET.parse(logs / "gpu_tier.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n, fail, err, skip = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    tier.update(passed=n - fail - err - skip, failed=fail + err, skipped=skip, seconds=float(suite.get("time", 0)))
    tier["failures"] = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None or c.find("error") is not None][:20]
except (OSError, ET.ParseError, IndexError) as e:
    tier["error"] = f"no junit report ({type(e).__name__}); timed out?"
if bench_rc != 0 or not (logs / "bench.json").is_file():
    print(f"gpu_check: bench_gpu.py failed or timed out (rc {bench_rc}); {result} not written", file=sys.stderr)
    sys.exit(0)
out = json.loads((logs / "bench.json").read_text())
out["gpu_tier"] = tier
out["gpu_check_seconds"] = seconds
result.write_text(json.dumps(out, indent=1) + "\n")
print(f"gpu_check: wrote {result} (tier: {tier.get('passed')} passed, {tier.get('failed')} failed, "
      f"{tier.get('skipped')} skipped; {seconds} s)")
EOF

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$LOGS"/*.log "$LOGS"/*.xml "$OUT"/ 2>/dev/null
  [ -f "$RESULT" ] && cp "$RESULT" "$OUT"/
fi
say "done: tier rc $TIER_RC, bench rc $BENCH_RC (logs in $LOGS)"
[ "$TIER_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
