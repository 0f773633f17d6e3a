#!/usr/bin/env bash
# Where does a request wait? An A/B probe for open-loop tail latency (issue 13), smaller and
# faster than compare.sh: the upstream (nginx, 1 worker) and the load generator on CPU 0, each
# proxy alone on CPU 1, open loop at one rate, rows measured in turns, medians over rounds.
#
#   bash benches/tail_probe.sh [--load PCT | --rate RPS] [--secs S] [--rounds N] [--perf] [--conns N]
#                              [--shadow PCT]
#
# Rows: pipe (L4 limit), nginx, flipgate (compare.sh's config: 5 % sticky canary, circuit on),
# flipgate-bare (one target, no canary, no circuit: what the control plane's work costs), and
# flipgate-b when FLIPGATE_BIN_B names a second build (an A/B of a change; FLIPGATE_B_ENV, e.g.
# "KNOB=1 OTHER=2", is its environment). With --shadow PCT, the row flipgate-shadow: flipgate's
# config plus [routes.shadow] copying PCT % of requests to a third target (the same upstream nginx,
# on a second port), so live p99 with shadow on and off is measured in the same run, in turns.
# The rate is --load % (default 50) of nginx's closed-loop ceiling (wrk -c32), or --rate. With --perf, `perf sched`
# records CPU 1 during each run and the row adds: the proxy's worst wait for the CPU, its number of
# waits over 1 ms, and the CPU time other tasks took on CPU 1 (they preempt the proxy).
# Binaries: FLIPGATE_BIN, FLIPGATE_BIN_B, LOADGEN_BIN, PIPE_BIN (default: target/release).
# Loopback only; everything it starts is stopped on exit.
set -euo pipefail
RATE=0; LOAD=50; SECS=3; ROUNDS=3; PERF=0; CONNS=64; SHADOW=
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE="$2"; shift ;;
    --load) LOAD="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --perf) PERF=1 ;;
    --shadow) SHADOW="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "tail_probe.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FLIPGATE="${FLIPGATE_BIN:-$ROOT/target/release/flipgate}"
LOADGEN="${LOADGEN_BIN:-$ROOT/target/release/examples/loadgen}"
PIPE="${PIPE_BIN:-$ROOT/target/release/examples/pipe}"
export PATH="$PATH:/usr/sbin"
for t in nginx wrk python3 taskset; do command -v "$t" >/dev/null || { echo "tail_probe.sh: needs $t (benches/compare.sh installs it)" >&2; exit 1; }; done
[ "$PERF" = 0 ] || command -v perf >/dev/null || { echo "tail_probe.sh: --perf needs perf" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

W="$(mktemp -d /tmp/flipgate-tail.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
load() { exec taskset -c 0 "$@"; }
proxied() { exec taskset -c 1 "$@"; }

UP=18180; UP_SHADOW=18181
declare -A PORT=([pipe]=19101 [nginx]=19102 [flipgate]=19104 [flipgate-bare]=19105 [flipgate-b]=19106 [flipgate-shadow]=19107)
mkdir -p "$W/up" "$W/ngx"
cat >"$W/up/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $W/up/pid; error_log $W/up/error.log warn;
worker_rlimit_nofile 65536; events { worker_connections 65536; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $W/up; proxy_temp_path $W/up; fastcgi_temp_path $W/up; uwsgi_temp_path $W/up; scgi_temp_path $W/up;
  server { listen 127.0.0.1:$UP reuseport backlog=4096; listen 127.0.0.1:$UP_SHADOW backlog=4096;
    location = /12 { default_type text/plain; return 200 "hello world\n"; } } }
EOF
load nginx -c "$W/up/nginx.conf" -p "$W/up" -e "$W/up/error.log" & PIDS+=($!)
cat >"$W/ngx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $W/ngx/pid; error_log $W/ngx/error.log warn;
worker_rlimit_nofile 65536; events { worker_connections 65536; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $W/ngx; proxy_temp_path $W/ngx; fastcgi_temp_path $W/ngx; uwsgi_temp_path $W/ngx; scgi_temp_path $W/ngx;
  upstream bot { server 127.0.0.1:$UP; keepalive 256; keepalive_requests 100000000; }
  server { listen 127.0.0.1:${PORT[nginx]} backlog=4096;
    location / { proxy_pass http://bot; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Request-Id \$request_id; } } }
EOF
declare -A PID
proxied nginx -c "$W/ngx/nginx.conf" -p "$W/ngx" -e "$W/ngx/error.log" & PIDS+=($!); PID[nginx]=$!
proxied "$PIPE" "127.0.0.1:${PORT[pipe]}" "127.0.0.1:$UP" & PIDS+=($!); PID[pipe]=$!

fg_config() { # name port admin bare [shadow-percent]
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
workers = 1
[admin]
listen = "127.0.0.1:$3"
[state]
dir = "$W/$1-state"
[[routes]]
name = "bot"
path_prefix = "/"
live = "blue"
[routes.targets]
blue = ["127.0.0.1:$UP"]
EOF
  [ "$4" = 1 ] && return
  cat <<EOF
green = ["127.0.0.1:$UP"]
[routes.canary]
target = "green"
percent = 5.0
sticky = "header:x-user-id"
[routes.circuit]
window = "30s"
min_requests = 20
max_error_rate = 0.05
bake = "5m"
EOF
  [ -z "${5:-}" ] && return
  cat <<EOF
[routes.targets.dark]
instances = ["127.0.0.1:$UP_SHADOW"]
[routes.shadow]
target = "dark"
percent = $5
EOF
}
ROWS=(pipe nginx flipgate flipgate-bare)
fg_start() { # row binary admin bare [env] [shadow-percent]
  fg_config "$1" "${PORT[$1]}" "$3" "$4" "${6:-}" >"$W/$1.toml"
  # shellcheck disable=SC2086 # $5 is a list of KEY=VALUE words
  RUST_LOG=warn exec_env ${5:-} taskset -c 1 "$2" run -c "$W/$1.toml" 2>"$W/$1.log" & PIDS+=($!); PID[$1]=$!
}
exec_env() { exec env "$@"; }
fg_start flipgate "$FLIPGATE" 19904 0
fg_start flipgate-bare "$FLIPGATE" 19905 1
if [ -n "${FLIPGATE_BIN_B:-}" ]; then fg_start flipgate-b "$FLIPGATE_BIN_B" 19906 0 "${FLIPGATE_B_ENV:-}"; ROWS+=(flipgate-b); fi
if [ -n "$SHADOW" ]; then fg_start flipgate-shadow "$FLIPGATE" 19907 0 "" "$SHADOW"; ROWS+=(flipgate-shadow); fi

for r in "${ROWS[@]}"; do
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:${PORT[$r]}/12" && break; sleep 0.05; done
  curl -sf -o /dev/null "http://127.0.0.1:${PORT[$r]}/12" || { echo "tail_probe.sh: $r does not answer: $(cat "$W/$r.log" 2>/dev/null)" >&2; exit 1; }
done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
csw() { awk '/ctxt_switches/ {s += $2} END {print s}' "/proc/$1/status"; }
UP_PID=${PIDS[0]}

if [ "$RATE" = 0 ]; then
  out=$(load wrk -t1 -c32 -d2s "http://127.0.0.1:${PORT[nginx]}/12")
  RATE=$(( $(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$out") * LOAD / 100 ))
fi
echo "tail_probe.sh: open loop at $RATE rps, $CONNS connections, ${SECS}s, $ROUNDS rounds" >&2
RES="$W/res.tsv"; : >"$RES"
for round in $(seq "$ROUNDS"); do
  for r in "${ROWS[@]}"; do
    t0=$(ticks "${PID[$r]}"); c0=$(csw "$UP_PID"); p0=$(csw "${PID[$r]}")
    if [ "$PERF" = 1 ]; then
      perf sched record -q -C 1 -o "$W/sched.data" -- sleep "$SECS.5" >/dev/null 2>&1 & perfpid=$!
    fi
    out=$(load "$LOADGEN" --url "http://127.0.0.1:${PORT[$r]}/12" --conns "$CONNS" --rate "$RATE" \
      --warmup 0.5 --duration "$SECS" --sticky-header x-user-id 2>&1) || { echo "tail_probe.sh: $r: $out" >&2; exit 1; }
    t1=$(ticks "${PID[$r]}"); c1=$(csw "$UP_PID"); p1=$(csw "${PID[$r]}")
    n=$(python3 -c "print($RATE * ($SECS + 0.5))")
    line="$r	$(tr ' ' '\n' <<<"$out" | awk -F= '$1 ~ /^(p50_us|p99_us|p999_us)$/ {printf "%s=%s ", $1, $2}')"
    line="$line cpu_us=$(python3 -c "print(round(($t1 - $t0) * 1e6 / $(getconf CLK_TCK) / $n, 2))")"
    # Context switches per request: the load generator's (all its threads), the upstream's, the proxy's main process.
    lg_csw=$(tr ' ' '\n' <<<"$out" | awk -F= '$1 == "csw" {print $2}')
    line="$line lg_csw=$(python3 -c "print(round($lg_csw / $n, 3))") up_csw=$(python3 -c "print(round(($c1 - $c0) / $n, 3))") px_csw=$(python3 -c "print(round(($p1 - $p0) / $n, 3))")"
    if [ "$PERF" = 1 ]; then
      wait "$perfpid" || true
      comm=$(cat "/proc/${PID[$r]}/comm")
      line="$line $(perf sched timehist -i "$W/sched.data" 2>/dev/null | python3 "$ROOT/benches/support/sched_summary.py" "$comm" "${PID[$r]}")"
    fi
    echo "$line" | tee -a "$RES" >&2
  done
done
python3 - "$RES" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(lambda: collections.defaultdict(list))
order = []
for line in open(sys.argv[1]):
    name, rest = line.rstrip("\n").split("\t")
    if name not in order: order.append(name)
    for kv in rest.split():
        k, v = kv.split("=")
        rows[name][k].append(float(v))
keys = list(rows[order[0]].keys())
for name in order:
    for k in rows[name]:
        if k not in keys: keys.append(k)
print(f"{'row':15}" + "".join(f"{k:>16}" for k in keys) + "   (medians)")
for name in order:
    cell = lambda v: f"{v:>16.1f}" if abs(v) >= 10 else f"{v:>16.3f}"
    print(f"{name:15}" + "".join(cell(statistics.median(rows[name][k]) if rows[name][k] else float('nan')) for k in keys))
PY
