#!/usr/bin/env bash
# Steady rps with the etcd state backend vs the file backend (issue 16): the same release build
# (`--features etcd`), the same route file but for `[state]`, the same nginx upstream, measured in
# turns (file, etcd, file, etcd, ...) with `wrk -t1 -c32`, flipgate alone on CPU 1, load and
# upstream (and etcd) on CPU 0. The data path never touches the store, so the two should agree
# within noise. Prints the median rps of each over the rounds.
#
#   bash benches/etcd_rps.sh               # 3 rounds of 20 s each
#   bash benches/etcd_rps.sh --rounds 5 --secs 30
#   bash benches/etcd_rps.sh --smoke       # no load: checks that both set-ups serve (a few curls)
#   options: --no-build (use FLIPGATE_BIN, default target/release/flipgate, built with the feature)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ROUNDS=3; SECS=20; BUILD=1; SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --smoke) SMOKE=1 ;;
    *) echo "etcd_rps.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ "$SMOKE" = 1 ] || command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "etcd_rps.sh: installing ${need[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"
if [ "$BUILD" = 1 ]; then
  echo "etcd_rps.sh: building flipgate --features etcd (release)" >&2
  (cd "$ROOT" && cargo build --release --quiet --features etcd --bin flipgate)
fi
FLIPGATE="${FLIPGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/flipgate}"

if [ "$(nproc)" -ge 2 ]; then LOAD_CPU=0; PROXY_CPU=1; else LOAD_CPU=0; PROXY_CPU=0; fi
W="$(mktemp -d /tmp/flipgate-etcd-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

UP=18180; PROXY=19104; ADMIN=19904; ETCD=12379; ETCD_PEER=12380
cat >"$W/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $W/pid; error_log $W/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $W; proxy_temp_path $W; fastcgi_temp_path $W; uwsgi_temp_path $W; scgi_temp_path $W;
  server { listen 127.0.0.1:$UP; location = /12 { default_type text/plain; return 200 "hello world\n"; } }
}
EOF
taskset -c "$LOAD_CPU" nginx -c "$W/nginx.conf" -p "$W" -e "$W/error.log" & PIDS+=($!)
taskset -c "$LOAD_CPU" etcd --name b --data-dir "$W/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD" --advertise-client-urls "http://127.0.0.1:$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "b=http://127.0.0.1:$ETCD_PEER" >"$W/etcd.log" 2>&1 & PIDS+=($!)

config() { # $1 = file | etcd
  local state="dir = \"$W/state-$1\""
  if [ "$1" = etcd ]; then
    state="$state
backend = \"etcd\"
[state.etcd]
endpoints = [\"http://127.0.0.1:$ETCD\"]"
  fi
  cat <<EOF
[server]
listen = "127.0.0.1:$PROXY"
workers = 1
[admin]
listen = "127.0.0.1:$ADMIN"
[state]
$state

[[routes]]
name = "bot"
path_prefix = "/"
live = "blue"
[routes.targets]
blue = ["127.0.0.1:$UP"]
green = ["127.0.0.1:$UP"]
[routes.canary]
target = "green"
percent = 5.0
sticky = "header:x-user-id"
[routes.circuit]
window = "30s"
min_requests = 20
max_error_rate = 0.05
EOF
}

wait_for() { # $1 = url
  for _ in $(seq 1 200); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "etcd_rps.sh: $1 never answered" >&2; exit 1
}
wait_for "http://127.0.0.1:$ETCD/health"
wait_for "http://127.0.0.1:$UP/12"

declare -A RPS=([file]="" [etcd]="")
run_one() { # $1 = backend
  config "$1" >"$W/$1.toml"
  RUST_LOG=warn taskset -c "$PROXY_CPU" "$FLIPGATE" run -c "$W/$1.toml" 2>"$W/$1.log" &
  local pid=$!
  PIDS+=("$pid")
  wait_for "http://127.0.0.1:$ADMIN/readyz"
  if [ "$1" = etcd ]; then
    curl -fsS "http://127.0.0.1:$ADMIN/api/v1/routes" | grep -q '"up": *true' \
      || { echo "etcd_rps.sh: the etcd backend is not up:" >&2; cat "$W/$1.log" >&2; exit 1; }
  fi
  if [ "$SMOKE" = 1 ]; then
    for _ in 1 2 3; do curl -fsS "http://127.0.0.1:$PROXY/12" >/dev/null; done
    echo "$1: serves"
  else
    taskset -c "$LOAD_CPU" wrk -t1 -c32 -d2s "http://127.0.0.1:$PROXY/12" >/dev/null # warm-up
    local r
    r=$(taskset -c "$LOAD_CPU" wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:$PROXY/12" | awk '/Requests\/sec/ {print $2}')
    echo "$1: $r rps"
    RPS[$1]="${RPS[$1]} $r"
  fi
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}
for round in $(seq 1 "$ROUNDS"); do
  [ "$SMOKE" = 1 ] && [ "$round" -gt 1 ] && break
  run_one file
  run_one etcd
done
if [ "$SMOKE" = 0 ]; then
  median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  echo "median rps over $ROUNDS rounds (wrk -t1 -c32, ${SECS}s): file $(echo "${RPS[file]}" | median), etcd $(echo "${RPS[etcd]}" | median)"
fi
