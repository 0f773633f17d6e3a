#!/usr/bin/env bash
# Zero lost requests, as a number (issue 11; tests/zero_loss.rs is the short in-process form).
#
#   bash benches/zero_loss.sh                 # 60 s of load through flipgate, then through nginx
#   bash benches/zero_loss.sh --secs 300      # a longer run (the changes are spread over it)
#   options: --secs S (load time per proxy, >= 10; default 60)  --conns N (default 32)
#            --flips N (and as many canary changes; default 100)  --reloads N (default 50)
#            --nginx-reloads N (default 50)  --no-nginx (flipgate only)  --out FILE (the summary)
#            --no-build (use the binaries already built; FLIPGATE_BIN, LOADGEN_BIN, CHURN_BIN
#            override their paths)
#
# flipgate (release, workers = 1) proxies route `bot` over three targets, each a server of one
# nginx upstream that answers its own name: `blue` (live in the file), `green`, and `red`, which
# is in the file but never live nor canary. examples/loadgen/ keeps N keep-alive connections in
# a closed loop for S seconds (--keep-going: a failed request is counted and its connection
# replaced, so the run ends with counts), and reads every body: only "blue" and "green" count as
# served. Meanwhile examples/churn.rs, one small process, spreads over the run 100 flips (green,
# blue, green, ...), each followed by a canary change that sends 1..50 % to the target that is
# not live, and 50 route-file reloads (temp file + rename; the versions differ in a comment
# line only, so the route's split is the same and the runtime state is kept). Every admin POST
# carries `content-type: application/json`.
#
# Reported for flipgate: requests served, errors (failed on the socket, non-2xx, a body other
# than blue/green, failed redials), requests to `red` by the body count and by flipgate's own
# `flipgate_requests_total{target="red"}`, the reloads applied (`config_reloads_total`), the
# route's state at the end (the last flip and canary, not the file's), and its RSS and open
# descriptors (/proc/PID) before the load, after it (once pool_idle_timeout has passed) and after
# one more request. Exit status 1 if any request was lost (or went to red), 3 if none was but the
# changes did not all happen as asked (a change refused, reloads coalesced, state not kept).
#
# Then the same load through nginx as the proxy (1 worker, upstream `blue` with keepalive), with
# `nginx -s reload` spread over the run: its requests and errors are reported, not judged.
#
# Load generator, upstream and change driver share CPU 0; the proxy has CPU 1 (taskset). Loopback
# only, on free ports picked at start; every loop is bounded; every process it starts is stopped
# on exit and its work directory (mktemp) removed. Needs root (or nginx, curl, python3 already
# installed) and a Debian-like system.
set -euo pipefail

SECS=60
CONNS=32
FLIPS=100
RELOADS=50
NGINX_RELOADS=50
NGINX=1
BUILD=1
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) SECS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --flips) FLIPS="$2"; shift ;;
    --reloads) RELOADS="$2"; shift ;;
    --nginx-reloads) NGINX_RELOADS="$2"; shift ;;
    --no-nginx) NGINX=0 ;;
    --no-build) BUILD=0 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "zero_loss.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
for v in SECS CONNS FLIPS RELOADS NGINX_RELOADS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "zero_loss.sh: $v must be a whole number" >&2; exit 2; }
done
[ "$SECS" -ge 10 ] || { echo "zero_loss.sh: --secs must be at least 10" >&2; exit 2; }
# Reloads go with every K-th flip, so they have to divide the flips.
[ "$FLIPS" -ge 1 ] && [ "$RELOADS" -ge 1 ] && [ $((FLIPS % RELOADS)) = 0 ] && [ "$CONNS" -ge 1 ] || {
  echo "zero_loss.sh: need --flips >= 1, --reloads >= 1 dividing --flips, --conns >= 1" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
say() { echo "zero_loss.sh: $*" >&2; }

# ---------------------------------------------------------------- tools
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  if [ "$(id -u)" != 0 ]; then say "need root to apt-get install ${need[*]}"; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

if [ "$BUILD" = 1 ]; then
  say "building flipgate, loadgen and churn (release)"
  cargo build --release --quiet --bin flipgate --example loadgen --example churn
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
FLIPGATE="${FLIPGATE_BIN:-$TARGET_DIR/release/flipgate}"
LOADGEN="${LOADGEN_BIN:-$TARGET_DIR/release/examples/loadgen}"
CHURN="${CHURN_BIN:-$TARGET_DIR/release/examples/churn}"
for b in "$FLIPGATE" "$LOADGEN" "$CHURN"; do [ -x "$b" ] || { say "missing $b"; exit 1; }; done

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(nproc)" -ge 2 ]; then
  LOAD_CPU=0; PROXY_CPU=1
else
  LOAD_CPU=0; PROXY_CPU=0
  say "only one CPU: load and proxy share it"
fi
# Both exec, so a backgrounded call's $! is the pid of the program itself.
load() { exec taskset -c "$LOAD_CPU" "$@"; }
proxied() { exec taskset -c "$PROXY_CPU" "$@"; }

W="$(mktemp -d /tmp/flipgate-zero-loss.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- ports
# Free ports on 127.0.0.1, all held at once while they are picked so they differ; a clash with a
# program that binds one of them in the instant between is possible but unlikely.
read -r BLUE GREEN RED FG ADMIN NGX < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')

wait_http() { # url: until anything answers (bounded: 10 s)
  for _ in $(seq 200); do
    curl -s -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  say "nothing answers at $1"; return 1
}

# ---------------------------------------------------------------- upstream
# One nginx, one worker, on the load CPU: three servers, each answering its target's name.
mkdir -p "$W/up"
cat >"$W/up/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $W/up/pid; error_log $W/up/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
  access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $W/up; proxy_temp_path $W/up; fastcgi_temp_path $W/up;
  uwsgi_temp_path $W/up; scgi_temp_path $W/up;
  server { listen 127.0.0.1:$BLUE backlog=4096; location / { default_type text/plain; return 200 "blue\n"; } }
  server { listen 127.0.0.1:$GREEN backlog=4096; location / { default_type text/plain; return 200 "green\n"; } }
  server { listen 127.0.0.1:$RED backlog=4096; location / { default_type text/plain; return 200 "red\n"; } }
}
EOF
load nginx -c "$W/up/nginx.conf" -p "$W/up" -e "$W/up/error.log" &
PIDS+=($!)
for p in $BLUE $GREEN $RED; do wait_http "http://127.0.0.1:$p/"; done

# ---------------------------------------------------------------- flipgate
POOL_IDLE=4
fg_file() { # $1 = version: a comment, so versions differ in bytes but not in routes or split
  cat <<EOF
# benches/zero_loss.sh route file, version $1
[server]
listen = "127.0.0.1:$FG"
workers = 1
pool_idle_timeout = "${POOL_IDLE}s"

[admin]
listen = "127.0.0.1:$ADMIN"

[state]
dir = "$W/fg/state"

[[routes]]
name = "bot"
path_prefix = "/"
live = "blue"
[routes.targets]
blue = ["127.0.0.1:$BLUE"]
green = ["127.0.0.1:$GREEN"]
red = ["127.0.0.1:$RED"]
EOF
}
mkdir -p "$W/fg/state"
fg_file 0 >"$W/fg/flipgate.toml"
fg_file a >"$W/fg/a.toml"
fg_file b >"$W/fg/b.toml"
RUST_LOG=warn proxied "$FLIPGATE" run -c "$W/fg/flipgate.toml" 2>"$W/fg/log" &
PIDS+=($!)
FG_PID=$!
wait_http "http://127.0.0.1:$ADMIN/healthz"
sleep 0.5 # the health check's connection is closed on flipgate's side too

fds() { # open descriptors of $1: total, then sockets
  local n=0 s=0 f l
  for f in /proc/"$1"/fd/*; do
    l=$(readlink "$f" 2>/dev/null) || continue
    n=$((n + 1))
    [[ "$l" == socket:* ]] && s=$((s + 1))
  done
  echo "$n $s"
}
upstream_conns() { # connections open to the three upstream servers (only flipgate makes them)
  if command -v ss >/dev/null; then
    ss -Htn state established state close-wait "( dport = :$BLUE or dport = :$GREEN or dport = :$RED )" | wc -l
  else echo "?"; fi
}
rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
metric() { # sum of a metric's samples whose line matches a pattern (0 when absent)
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" \
    | awk -v m="$1" -v p="$2" 'index($0, m) == 1 && $0 ~ p {s += $NF} END {printf "%d\n", s}'
}
kv() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; } # key, line of key=value pairs
# Requests that failed on the socket, from loadgen's summary by kind (stderr): those whose
# connection the server had already closed, so they were never written ("channel closed",
# "operation was canceled" in hyper's words: a client that retries on a new connection would
# recover them), and the rest (written, then no response).
unsent() { awk '$3 == "x" && /request failed: (channel closed|operation was canceled)/ {s += $2} END {print s + 0}' "$1"; }

read -r FD_BEFORE SOCK_BEFORE < <(fds "$FG_PID")
RSS_BEFORE=$(rss_kib "$FG_PID")
RELOADS_BEFORE=$(metric flipgate_config_reloads_total 'result="success"')
say "flipgate pid $FG_PID: $FD_BEFORE descriptors ($SOCK_BEFORE sockets), RSS $RSS_BEFORE KiB before the load"

# The changes are spread over the run: they start 2 s in and end about 2 s before it does.
SPAN=$((SECS - 4))
RATE=$(python3 -c "print($FLIPS / $SPAN)")
RELOAD_EVERY=$((FLIPS / RELOADS))
say "flipgate: $CONNS connections for ${SECS}s; $FLIPS flips + $FLIPS canary changes, $RELOADS reloads over ${SPAN}s"
load "$LOADGEN" --url "http://127.0.0.1:$FG/" --conns "$CONNS" --duration "$SECS" --warmup 0 \
  --keep-going --expect-body blue,green >"$W/fg/load.out" 2>"$W/fg/load.err" &
PIDS+=($!)
LG=$!
sleep 2
load "$CHURN" --config "$W/fg/flipgate.toml" --file-a "$W/fg/a.toml" --file-b "$W/fg/b.toml" \
  --admin "127.0.0.1:$ADMIN" --route bot --targets green,blue --rate "$RATE" --secs "$((SECS - 2))" \
  --count "$FLIPS" --reload-every "$RELOAD_EVERY" --canary >"$W/fg/churn.out" 2>"$W/fg/churn.err" &
PIDS+=($!)
CH=$!
CHURN_RC=0; wait "$CH" || CHURN_RC=$?
LG_RC=0; wait "$LG" || LG_RC=$?
LINE=$(cat "$W/fg/load.out")
CHURN_LINE=$(cat "$W/fg/churn.out")
[ -n "$LINE" ] || { say "loadgen printed nothing (exit $LG_RC): $(cat "$W/fg/load.err")"; exit 1; }
[ -n "$CHURN_LINE" ] || { say "churn printed nothing (exit $CHURN_RC): $(cat "$W/fg/churn.err")"; exit 1; }
[ -s "$W/fg/load.err" ] && sed 's/^/  /' "$W/fg/load.err" >&2
FG_UNSENT=$(unsent "$W/fg/load.err")
[ -s "$W/fg/churn.err" ] && sed 's/^/  /' "$W/fg/churn.err" >&2

FG_SERVED=$(kv requests "$LINE"); FG_RPS=$(kv rps "$LINE")
FG_ERR=$(kv errors "$LINE"); FG_NON2XX=$(kv non2xx "$LINE"); FG_UNEXP=$(kv unexpected "$LINE")
FG_CONNERR=$(kv connect_errors "$LINE")
FG_BLUE=$(kv body_blue "$LINE"); FG_GREEN=$(kv body_green "$LINE")
FG_LOST=$((FG_ERR + FG_NON2XX + FG_UNEXP + FG_CONNERR))
FG_TOTAL=$((FG_SERVED + FG_ERR + FG_NON2XX + FG_UNEXP))
FLIPS_DONE=$(kv flips "$CHURN_LINE"); CANARIES_DONE=$(kv canaries "$CHURN_LINE")
RELOADS_WRITTEN=$(kv reloads "$CHURN_LINE"); CHURN_FAILED=$(kv failed "$CHURN_LINE")
sleep 1 # the last reload's file event
RED_METRIC=$(metric flipgate_requests_total 'target="red"')
BOT_METRIC=$(metric flipgate_requests_total 'route="bot"')
RELOADS_APPLIED=$(( $(metric flipgate_config_reloads_total 'result="success"') - RELOADS_BEFORE ))
RELOADS_FAILED=$(metric flipgate_config_reloads_total 'result="failure"')
# The route's state at the end: the last flip's live target and the last canary, which 50 file
# reloads (whose file says live = "blue", no canary) must have kept.
STATE=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN/api/v1/routes/bot" | python3 -c '
import json, sys
r = json.load(sys.stdin)
c = r.get("canary") or {}
print(r.get("live"), c.get("target"), c.get("percent"))')
LAST=$((FLIPS - 1))
WANT_LIVE=$([ $((LAST % 2)) = 0 ] && echo green || echo blue)
WANT_CANARY=$([ "$WANT_LIVE" = green ] && echo blue || echo green)
WANT_STATE="$WANT_LIVE $WANT_CANARY $(python3 -c "print(float(1 + $LAST % 50))")"

say "waiting $((POOL_IDLE + 2))s (pool_idle_timeout + 2 s) with no traffic"
sleep $((POOL_IDLE + 2))
read -r FD_AFTER SOCK_AFTER < <(fds "$FG_PID")
UP_AFTER=$(upstream_conns)
RSS_AFTER=$(rss_kib "$FG_PID")
# pool_idle_timeout is applied when the pool is next used (oldest first): one request shows what
# the descriptor count comes back to once it is.
PROBE=$(curl -s --max-time 5 "http://127.0.0.1:$FG/" || echo failed)
sleep 0.5
read -r FD_PROBE SOCK_PROBE < <(fds "$FG_PID")
UP_PROBE=$(upstream_conns)
RSS_PROBE=$(rss_kib "$FG_PID")
kill "$FG_PID"; FG_RC=0; wait "$FG_PID" || FG_RC=$?

# FAIL (exit 1): a request lost or sent to red. INCOMPLETE (exit 3): none lost, but the run did not
# do what it should have (changes refused or coalesced, state not kept, nothing served).
why=()
[ "$FG_LOST" = 0 ] || why+=("$FG_LOST requests lost or failed redials")
[ "$RED_METRIC" = 0 ] || why+=("flipgate counted $RED_METRIC requests to red")
[ "$PROBE" = blue ] || [ "$PROBE" = green ] || why+=("probe after the run answered: $PROBE")
LOST=${#why[@]}
[ "$FG_SERVED" -gt 0 ] || why+=("no request served")
[ "$FLIPS_DONE" = "$FLIPS" ] && [ "$CANARIES_DONE" = "$FLIPS" ] && [ "$CHURN_FAILED" = 0 ] \
  || why+=("changes incomplete: $CHURN_LINE")
[ "$RELOADS_WRITTEN" = "$RELOADS" ] && [ "$RELOADS_APPLIED" = "$RELOADS" ] \
  || why+=("reloads: $RELOADS_WRITTEN written, $RELOADS_APPLIED applied, want $RELOADS")
[ "$STATE" = "$WANT_STATE" ] || why+=("route state at the end: $STATE, want $WANT_STATE")
if [ "$LOST" -gt 0 ]; then VERDICT=FAIL; RC=1
elif [ ${#why[@]} -gt 0 ]; then VERDICT=INCOMPLETE; RC=3
else VERDICT=PASS; RC=0
fi

# ---------------------------------------------------------------- nginx as the proxy
if [ "$NGINX" = 1 ]; then
  mkdir -p "$W/ngx"
  cat >"$W/ngx/nginx.conf" <<EOF
daemon off; worker_processes 1; pid $W/ngx/pid; error_log $W/ngx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
  access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $W/ngx; proxy_temp_path $W/ngx; fastcgi_temp_path $W/ngx;
  uwsgi_temp_path $W/ngx; scgi_temp_path $W/ngx;
  upstream bot { server 127.0.0.1:$BLUE; keepalive 256; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGX backlog=4096;
    location / {
      proxy_pass http://bot; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Request-Id \$request_id;
    }
  }
}
EOF
  proxied nginx -c "$W/ngx/nginx.conf" -p "$W/ngx" -e "$W/ngx/error.log" &
  PIDS+=($!)
  NGX_PID=$!
  wait_http "http://127.0.0.1:$NGX/"
  say "nginx: $CONNS connections for ${SECS}s; $NGINX_RELOADS reloads over ${SPAN}s"
  load "$LOADGEN" --url "http://127.0.0.1:$NGX/" --conns "$CONNS" --duration "$SECS" --warmup 0 \
    --keep-going --expect-body blue >"$W/ngx/load.out" 2>"$W/ngx/load.err" &
  PIDS+=($!)
  LG=$!
  sleep 2
  NGX_RELOADS_DONE=0
  if [ "$NGINX_RELOADS" -gt 0 ]; then
    # Reload k at 2 s + k * SPAN / N, from this shell (bounded: N reloads).
    t0=$(date +%s.%N)
    for k in $(seq 0 $((NGINX_RELOADS - 1))); do
      due=$(python3 -c "print(max(0.0, $t0 + $k * $SPAN / $NGINX_RELOADS - $(date +%s.%N)))")
      sleep "$due"
      if taskset -c "$LOAD_CPU" nginx -c "$W/ngx/nginx.conf" -p "$W/ngx" -e "$W/ngx/error.log" -s reload 2>>"$W/ngx/reload.err"; then
        NGX_RELOADS_DONE=$((NGX_RELOADS_DONE + 1))
      fi
    done
  fi
  LG_RC=0; wait "$LG" || LG_RC=$?
  NLINE=$(cat "$W/ngx/load.out")
  [ -n "$NLINE" ] || { say "loadgen (nginx) printed nothing (exit $LG_RC): $(cat "$W/ngx/load.err")"; exit 1; }
  [ -s "$W/ngx/load.err" ] && sed 's/^/  /' "$W/ngx/load.err" >&2
  NGX_SERVED=$(kv requests "$NLINE"); NGX_RPS=$(kv rps "$NLINE")
  NGX_ERR=$(kv errors "$NLINE"); NGX_NON2XX=$(kv non2xx "$NLINE"); NGX_UNEXP=$(kv unexpected "$NLINE")
  NGX_CONNERR=$(kv connect_errors "$NLINE")
  NGX_TOTAL=$((NGX_SERVED + NGX_ERR + NGX_NON2XX + NGX_UNEXP))
  NGX_UNSENT=$(unsent "$W/ngx/load.err")
fi

# ---------------------------------------------------------------- report
{
  echo "zero_loss: ${SECS}s closed loop, $CONNS keep-alive connections, proxy on CPU $PROXY_CPU"
  echo "flipgate $VERDICT: requests=$FG_TOTAL served=$FG_SERVED (blue $FG_BLUE, green $FG_GREEN) rps=$FG_RPS"
  echo "  errors=$FG_LOST (socket $FG_ERR of which $FG_UNSENT on a connection already closed, non-2xx $FG_NON2XX, other body $FG_UNEXP, failed redials $FG_CONNERR)"
  echo "  red: $FG_UNEXP answered by a body other than blue/green; flipgate_requests_total{target=\"red\"}=$RED_METRIC"
  echo "  flipgate_requests_total{route=\"bot\"}=$BOT_METRIC (flipgate's own count of the requests it answered)"
  echo "  changes: flips=$FLIPS_DONE canaries=$CANARIES_DONE reloads written=$RELOADS_WRITTEN applied=$RELOADS_APPLIED failed=$RELOADS_FAILED; state at the end: $STATE (want $WANT_STATE)"
  echo "  descriptors (sockets; upstream connections): before $FD_BEFORE ($SOCK_BEFORE; 0), after $FD_AFTER ($SOCK_AFTER; $UP_AFTER), after one more request $FD_PROBE ($SOCK_PROBE; $UP_PROBE)"
  echo "  RSS KiB: before $RSS_BEFORE, after $RSS_AFTER, after one more request $RSS_PROBE; exit status on SIGTERM $FG_RC"
  [ ${#why[@]} = 0 ] || printf "  $VERDICT: %s\n" "${why[@]}"
  if [ "$NGINX" = 1 ]; then
    echo "nginx ($NGX_RELOADS_DONE of $NGINX_RELOADS reloads): requests=$NGX_TOTAL served=$NGX_SERVED rps=$NGX_RPS"
    echo "  errors=$((NGX_ERR + NGX_NON2XX + NGX_UNEXP)) (socket $NGX_ERR of which $NGX_UNSENT on a connection nginx had already closed, $((NGX_ERR - NGX_UNSENT)) written and not answered; non-2xx $NGX_NON2XX, other body $NGX_UNEXP), failed redials $NGX_CONNERR"
  fi
} | tee "${OUT:-/dev/null}"
exit "$RC"
