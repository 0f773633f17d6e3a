#!/usr/bin/env bash
# Side-by-side load benchmark: direct, an L4 byte pipe (the limit), nginx, HAProxy and flipgate,
# measured in turns (A B C D E, A B C D E, ...) on loopback, with the proxy under test alone on
# one CPU and the load generator + upstream on another.
#
#   bash benches/compare.sh            # default run, 3 rounds, about 20 minutes
#   bash benches/compare.sh --quick    # 1 round, short runs, HTTP/1.1 12 B only: a sanity check
#   bash benches/compare.sh --tls-only # only the TLS rows (closed loop, open loop at 50 %)
#   bash benches/compare.sh --tail     # only the open-loop rows at 50 and 75 % (HTTP/1.1, h2c),
#                                      # 3 rounds, about 11 minutes: to check a tail change
#   bash benches/compare.sh --h2       # only the HTTP/2 closed-loop rows (h2c, h2 over TLS),
#                                      # 3 rounds, about two minutes: to check an HTTP/2 change
#   options: --rounds N  --secs S  --out FILE (the results table, also printed)
#            --slices K  --slice-secs S (the open-loop rows at 25/50/75 %: K slices of S seconds
#            per proxy and round, taken in turns, default 4 x 1 s; see below)
#            --no-build (use the binaries already built; FLIPGATE_BIN, LOADGEN_BIN, PIPE_BIN
#            override their paths, e.g. to compare two builds of flipgate)
#
# What it measures, per proxy (medians over rounds; warm-up runs are discarded):
#   - closed loop (wrk -t1): rps and p99 at 32 and 256 connections, and at 32 how busy each CPU
#     was (`busy_load`, `busy_proxy`: a proxy whose CPU is not full is bound by the load CPU);
#   - open loop (examples/loadgen/, latency from the intended send time) at 25/50/75 % of nginx's
#     32-connection ceiling: p50/p99/p99.9, and the proxy's own CPU time per request (utime+stime
#     of its processes from /proc). A round of these rows is K short slices per proxy, taken in
#     turns (A B C D E, A B C D E, ...), whose latencies are pooled before the percentiles are
#     taken: on a shared VM the proxy's CPU is taken for up to a few ms by work that is no
#     proxy's (the host's kdamond), and how often drifts within minutes (direct's own p99.9 went
#     from 0.2 to 2.9 ms between rounds), so one 2 s run per proxy let one stall, or one quiet
#     spell, set a round's p99.9. nginx is measured twice (`nginx-aa`, an A/A control);
#   - HTTP/1.1 with 12 B and 64 KiB bodies, TLS (12 B), HTTP/2 cleartext and over TLS (h2load,
#     12 B, closed loop; open loop for h2c at 50/75 % of nginx's h2c ceiling, 64 request slots
#     over 4 connections);
#   - what a proxy's way of answering costs the rest of the machine, per request in the open-loop
#     runs: the load CPU's time (load generator + upstream, `load_cpu_us`), TCP segments sent on
#     loopback (`segs`), and upstream connections opened (`up_conns`, per run);
#   - peak RSS, and RSS per idle keep-alive client connection (10,000 of them);
#   - flipgate under change: 10 file reloads + 10 flips per second during a closed-loop run.
# The sticky canary (5 %, header:x-user-id), metrics and the circuit are on in flipgate's config.
# Any request error or non-2xx aborts the run. Loopback only; every process it starts is stopped
# on exit. Needs root (or the tools already installed) and a Debian-like system.
set -euo pipefail

ROUNDS=3
SECS=2
QUICK=0
TLS_ONLY=0
TAIL=0
H2_ONLY=0
OUT=""
BUILD=1
SLICES=4
SLICE_SECS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; ROUNDS=1; SECS=1; SLICES=1 ;;
    --tls-only) TLS_ONLY=1 ;;
    --tail) TAIL=1 ;;
    --h2) H2_ONLY=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --secs) SECS="$2"; shift ;;
    --slices) SLICES="$2"; shift ;;
    --slice-secs) SLICE_SECS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# ---------------------------------------------------------------- tools
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "compare.sh: installing ${need[*]}" >&2
  if [ "$(id -u)" != 0 ]; then echo "compare.sh: need root to apt-get install ${need[*]}" >&2; exit 1; fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"
# nginx-light's package starts a system nginx on port 80; it is not used here.

if [ "$BUILD" = 1 ]; then
  echo "compare.sh: building flipgate and the bench tools (release)" >&2
  cargo build --release --quiet --bin flipgate --example loadgen --example pipe --example churn
fi
FLIPGATE="${FLIPGATE_BIN:-$ROOT/target/release/flipgate}"
LOADGEN="${LOADGEN_BIN:-$ROOT/target/release/examples/loadgen}"
PIPE="${PIPE_BIN:-$ROOT/target/release/examples/pipe}"
CHURN="${CHURN_BIN:-$ROOT/target/release/examples/churn}"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Idle keep-alive connections for the memory figure: 10,000, or fewer where the descriptor limit
# (which a container may not let even root raise) would not fit them in HAProxy (2 per connection).
FD_LIMIT=$(ulimit -n)
IDLE=$(( (FD_LIMIT - 1000) / 2 < 10000 ? (FD_LIMIT - 1000) / 2 : 10000 ))
HAPROXY_MAXCONN=$((IDLE + 200))

NCPU=$(nproc)
if [ "$NCPU" -ge 2 ]; then
  LOAD_CPU=0; PROXY_CPU=1
else
  LOAD_CPU=0; PROXY_CPU=0
  echo "compare.sh: only one CPU: load and proxy share it; figures are not comparable" >&2
fi
# Both exec, so a backgrounded call's $! is the pid of the program itself.
load() { exec taskset -c "$LOAD_CPU" "$@"; }
proxied() { exec taskset -c "$PROXY_CPU" "$@"; }

W="$(mktemp -d /tmp/flipgate-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

# ---------------------------------------------------------------- ports and files
UP=18080; UP_TLS=18443; UP_H2=18082
declare -A H1=([pipe]=19001 [nginx]=19002 [haproxy]=19003 [flipgate]=19004)
declare -A TLS=([pipe]=19401 [nginx]=19402 [haproxy]=19403 [flipgate]=19404)
declare -A H2=([pipe]=19201 [nginx]=19202 [haproxy]=19203 [flipgate]=19004)
ADMIN=19904
PROXIES=(direct pipe nginx haproxy flipgate)
# The open-loop rows at 25/50/75 % measure nginx a second time, last in each turn, as `nginx-aa`
# (an A/A control): its ratio to nginx is what the method reads for two identical proxies, i.e.
# how far apart a row's ratios can be by chance alone.
OPEN_PROXIES=("${PROXIES[@]}" nginx-aa)

# A throw-away CA and a server certificate for localhost (rustls refuses a CA as end entity).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=flipgate bench CA" \
  -keyout "$W/ca.key" -out "$W/ca.pem" >/dev/null 2>&1
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$W/key.pem" \
  -out "$W/leaf.csr" >/dev/null 2>&1
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$W/leaf.ext"
openssl x509 -req -in "$W/leaf.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
  -extfile "$W/leaf.ext" -out "$W/cert.pem" >/dev/null 2>&1
cat "$W/cert.pem" "$W/key.pem" >"$W/combined.pem"
head -c 65536 /dev/zero | tr '\0' 'x' >"$W/64k"

# The upstream, the same for everyone: nginx, one worker, on the load CPU.
mkdir -p "$W/up" "$W/ngx"
cat >"$W/up/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $W/up/pid; error_log $W/up/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
  access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $W/up; proxy_temp_path $W/up; fastcgi_temp_path $W/up;
  uwsgi_temp_path $W/up; scgi_temp_path $W/up;
  server {
    listen 127.0.0.1:$UP reuseport backlog=4096; listen 127.0.0.1:$UP_H2 http2;
    listen 127.0.0.1:$UP_TLS ssl http2;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    location = /12 { default_type text/plain; return 200 "hello world\n"; }
    location = /64k { default_type application/octet-stream; alias $W/64k; }
  }
}
EOF
load nginx -c "$W/up/nginx.conf" -p "$W/up" -e "$W/up/error.log" &
PIDS+=($!)
UPSTREAM_PID=$!

# nginx as the proxy: 1 worker, upstream keepalive, the same forwarding headers flipgate sets.
cat >"$W/ngx/nginx.conf" <<EOF
daemon off; worker_processes 1; pid $W/ngx/pid; error_log $W/ngx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
  access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $W/ngx; proxy_temp_path $W/ngx; fastcgi_temp_path $W/ngx;
  uwsgi_temp_path $W/ngx; scgi_temp_path $W/ngx;
  upstream bot { server 127.0.0.1:$UP; keepalive 256; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:${H1[nginx]} backlog=4096; listen 127.0.0.1:${H2[nginx]} http2;
    listen 127.0.0.1:${TLS[nginx]} ssl http2;
    ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    location / {
      proxy_pass http://bot; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Request-Id \$request_id;
      proxy_buffering on;
    }
  }
}
EOF
proxied nginx -c "$W/ngx/nginx.conf" -p "$W/ngx" -e "$W/ngx/error.log" &
PIDS+=($!)
NGINX_MASTER=$!

cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $HAPROXY_MAXCONN
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:${H1[haproxy]}
  bind 127.0.0.1:${H2[haproxy]} proto h2
  bind 127.0.0.1:${TLS[haproxy]} ssl crt $W/combined.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  default_backend bot
backend bot
  server up 127.0.0.1:$UP
EOF
proxied haproxy -f "$W/haproxy.cfg" -db &
PIDS+=($!)
HAPROXY_PID=$!

proxied "$PIPE" "127.0.0.1:${H1[pipe]}" "127.0.0.1:$UP" &
PIDS+=($!); PIPE_PID=$!
proxied "$PIPE" "127.0.0.1:${TLS[pipe]}" "127.0.0.1:$UP_TLS" &
PIDS+=($!); PIPE_TLS_PID=$!
proxied "$PIPE" "127.0.0.1:${H2[pipe]}" "127.0.0.1:$UP_H2" &
PIDS+=($!); PIPE_H2_PID=$!

flipgate_config() { # $1 = the dummy route's prefix (alternated by the reload test)
  cat <<EOF
[server]
listen = "127.0.0.1:${H1[flipgate]}"
workers = 1
[server.tls]
listen = "127.0.0.1:${TLS[flipgate]}"
certs = [{ cert = "$W/cert.pem", key = "$W/key.pem" }]

[admin]
listen = "127.0.0.1:$ADMIN"

[state]
dir = "$W/fg-state"

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
bake = "5m"

[[routes]]
name = "other"
path_prefix = "$1"
live = "a"
[routes.targets]
a = ["127.0.0.1:9"]
EOF
}
mkdir -p "$W/fg"
flipgate_config /dummy-a/ >"$W/fg/flipgate.toml"
# The two versions of the file that the under-change run alternates between.
flipgate_config /dummy-0/ >"$W/fg/a.toml"
flipgate_config /dummy-1/ >"$W/fg/b.toml"
RUST_LOG=warn proxied "$FLIPGATE" run -c "$W/fg/flipgate.toml" 2>"$W/fg/log" &
PIDS+=($!)
FLIPGATE_PID=$!

# ---------------------------------------------------------------- helpers
wait_port() {
  for _ in $(seq 200); do
    if curl -s -o /dev/null "http://127.0.0.1:$1/12" 2>/dev/null || curl -sk -o /dev/null "https://127.0.0.1:$1/12" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "compare.sh: nothing answers on port $1" >&2; return 1
}
for p in $UP ${H1[pipe]} ${H1[nginx]} ${H1[haproxy]} ${H1[flipgate]}; do wait_port "$p"; done
FLIPGATE_TLS=1
if ! curl -sfk -o /dev/null "https://127.0.0.1:${TLS[flipgate]}/12" 2>/dev/null; then
  FLIPGATE_TLS=0
  echo "compare.sh: flipgate serves no TLS in this build; its TLS rows are n/a" >&2
fi

pids_of() { # the processes whose CPU and memory count for a proxy
  case "${1%-aa}" in
    nginx) echo "$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')" ;;
    haproxy) echo "$HAPROXY_PID $(pgrep -P "$HAPROXY_PID" | tr '\n' ' ')" ;;
    flipgate) echo "$FLIPGATE_PID" ;;
    pipe) echo "$PIPE_PID $PIPE_TLS_PID $PIPE_H2_PID" ;;
    direct) echo "" ;;
  esac
}
cpu_ticks() { # utime + stime, in clock ticks, summed over the processes
  local t=0 p
  for p in $(pids_of "$1"); do
    [ -r "/proc/$p/stat" ] || abort "$1 (pid $p) is gone"
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
mem_kib() { # $1 proxy, $2 VmRSS | VmHWM
  local t=0 p
  for p in $(pids_of "$1"); do
    t=$((t + $(awk -v k="$2:" '$1 == k {print $2}' "/proc/$p/status")))
  done
  echo "$t"
}
port_of() { # $1 proxy, $2 proto
  local p="${1%-aa}"
  case "$p:$2" in
    direct:h1) echo $UP ;; direct:tls) echo $UP_TLS ;; direct:h2) echo $UP_H2 ;;
    *:h1) echo "${H1[$p]}" ;; *:tls) echo "${TLS[$p]}" ;; *:h2) echo "${H2[$p]}" ;;
  esac
}
url_of() { # $1 proxy, $2 proto, $3 path
  if [ "$2" = tls ]; then echo "https://localhost:$(port_of "$1" tls)$3"; else echo "http://127.0.0.1:$(port_of "$1" "$2")$3"; fi
}
skip() { [ "$1" = flipgate ] && [ "$2" = tls ] && [ "$FLIPGATE_TLS" = 0 ]; }

for p in nginx haproxy flipgate pipe; do echo "compare.sh: $p pids: $(pids_of $p)" >&2; done
RES="${OUT:+$OUT.raw.tsv}"; RES="${RES:-$W/results.tsv}"
: >"$RES"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RES"; } # proxy case metric round value
abort() { echo "compare.sh: ABORT: $*" >&2; exit 1; }

cpu_jiffies() { # "busy total" jiffies of one CPU, from /proc/stat
  awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat
}
busy_pct() { # busy0 total0 busy1 total1: percent of the interval the CPU was busy
  python3 -c "print(round(100 * ($3 - $1) / max(1, $4 - $2), 1))"
}
# wrk closed loop: sets RPS P99_US, and LOAD_BUSY PROXY_BUSY (percent of each CPU used during the
# run: a proxy whose CPU is not full is bound by the load CPU, not by its own cost)
wrk_run() { # proxy proto path conns secs
  local out lb0 lt0 lb1 lt1 pb0 pt0 pb1 pt1
  read -r lb0 lt0 < <(cpu_jiffies "$LOAD_CPU"); read -r pb0 pt0 < <(cpu_jiffies "$PROXY_CPU")
  out=$(load wrk -t1 -c"$4" -d"${5}s" --latency -H "x-user-id: user-8841" "$(url_of "$1" "$2" "$3")" 2>&1) || abort "wrk failed for $1: $out"
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then abort "$1 $2 $3 c$4: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"; fi
  RPS=$(awk '/^Requests\/sec/ {printf "%d", $2}' <<<"$out")
  P99_US=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); print v } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 } }' <<<"$out")
  [ -n "$RPS" ] || abort "cannot parse wrk output: $out"
  read -r lb1 lt1 < <(cpu_jiffies "$LOAD_CPU"); read -r pb1 pt1 < <(cpu_jiffies "$PROXY_CPU")
  LOAD_BUSY=$(busy_pct "$lb0" "$lt0" "$lb1" "$lt1"); PROXY_BUSY=$(busy_pct "$pb0" "$pt0" "$pb1" "$pt1")
}
# h2load closed loop over h2c (proto h2) or h2 over TLS (proto tls): sets RPS
h2_run() { # proxy conns secs [proto]
  local out
  out=$(load h2load -t1 -c"$2" -m4 -D"$3" "$(url_of "$1" "${4:-h2}" /12)" 2>&1) || abort "h2load failed for $1: $out"
  local failed
  failed=$(awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^(failed|errored),?$/) s += $i; print s + 0}' <<<"$out")
  local non2xx
  non2xx=$(awk '/^status codes:/ {print $5 + $7 + $9}' <<<"$out")
  if [ "$failed" != 0 ] || [ "$non2xx" != 0 ]; then abort "h2load $1: failed=$failed non2xx=$non2xx"; fi
  RPS=$(awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) {printf "%d", $(i-1); exit}}' <<<"$out")
  [ -n "$RPS" ] || abort "cannot parse h2load output: $out"
}
tcp_stat() { # a counter of the Tcp line in /proc/net/snmp (OutSegs, ActiveOpens)
  awk -v k="$1" '$1 == "Tcp:" && !n { for (i = 2; i <= NF; i++) col[$i] = i; n = 1; next }
                 $1 == "Tcp:" && n { print $col[k] }' /proc/net/snmp
}
# loadgen open loop: sets P50 P99 P999 (µs), CPU_US (proxy CPU per request, µs), LOAD_CPU_US (load
# generator + upstream CPU per request, µs), SEGS (TCP segments per request), UP_CONNS (connections
# opened other than the generator's own: the proxy's to the upstream); with a 6th argument, also
# writes the latency histogram there (loadgen --hist)
open_run() { # proxy proto(h1|tls|h2) path rate secs [hist-file]
  local extra=() out t0 t1 u0 u1 s0 s1 o0 o1 conns=64
  [ "$2" = tls ] && extra=(--ca "$W/ca.pem")
  [ "$2" = h2 ] && { extra=(--h2 --h2-conns 4); conns=4; }
  [ -n "${6:-}" ] && extra+=(--hist "$6")
  t0=$(cpu_ticks "$1"); u0=$(awk '{print $14 + $15}' "/proc/$UPSTREAM_PID/stat")
  s0=$(tcp_stat OutSegs); o0=$(tcp_stat ActiveOpens)
  out=$(load "$LOADGEN" --url "$(url_of "$1" "$2" "$3")" --conns 64 --rate "$4" --warmup 0.5 \
    --duration "$5" --sticky-header x-user-id "${extra[@]}" 2>&1) || abort "loadgen $1 $2 $3 @$4: $out"
  t1=$(cpu_ticks "$1"); u1=$(awk '{print $14 + $15}' "/proc/$UPSTREAM_PID/stat")
  s1=$(tcp_stat OutSegs); o1=$(tcp_stat ActiveOpens)
  eval "$(tr ' ' '\n' <<<"$out" | grep -E '^(requests|p50_us|p99_us|p999_us|cpu_us)=' | sed 's/^/LG_/')"
  P50=$LG_p50_us; P99=$LG_p99_us; P999=$LG_p999_us
  # Counters cover warm-up + measured phase: divide by every request sent in both.
  local total hz
  total=$(python3 -c "print(int($4 * ($5 + 0.5)))"); hz=$(getconf CLK_TCK)
  CPU_US=$(python3 -c "print(round(($t1 - $t0) * 1e6 / $hz / $total, 2) if '$1' != 'direct' else '')")
  LOAD_CPU_US=$(python3 -c "print(round((($u1 - $u0) * 1e6 / $hz + $LG_cpu_us) / $total, 2))")
  SEGS=$(python3 -c "print(round(($s1 - $s0) / $total, 2))")
  UP_CONNS=$((o1 - o0 - conns))
}
OPEN_METRICS="P50 P99 P999 CPU_US LOAD_CPU_US SEGS UP_CONNS"
COST_METRICS="CPU_US LOAD_CPU_US SEGS UP_CONNS"
# Percentiles of every request in the given histogram files (loadgen --hist) pooled: "p50 p99 p999"
pooled() {
  python3 - "$@" <<'PY'
import collections, math, sys
c = collections.Counter()
for f in sys.argv[1:]:
    for line in open(f):
        v, n = line.split()
        c[int(v)] += int(n)
total = sum(c.values())
def q(p):
    want, seen = max(1, math.ceil(p * total)), 0
    for v, n in sorted(c.items()):
        seen += n
        if seen >= want:
            return v
    return 0
print(q(0.5), q(0.99), q(0.999))
PY
}
# One round of an open-loop row at pct % for every proxy: SLICES slices of SLICE_SECS each, in
# turns; cost metrics recorded per slice, latency percentiles of the slices' requests pooled.
open_row() { # proto(h1|h2) case rate pct round
  local s p
  mkdir -p "$W/hist"
  rm -f "$W/hist/"*
  for s in $(seq "$SLICES"); do
    for p in "${OPEN_PROXIES[@]}"; do
      open_run "$p" "$1" /12 "$3" "$SLICE_SECS" "$W/hist/$p.$s"
      for m in $COST_METRICS; do record "$p" "$2" "${m,,}_at$4" "$5" "${!m}"; done
    done
  done
  for p in "${OPEN_PROXIES[@]}"; do
    read -r P50 P99 P999 < <(pooled "$W/hist/$p."*)
    for m in P50 P99 P999; do record "$p" "$2" "${m,,}_at$4" "$5" "${!m}"; done
  done
}

# ---------------------------------------------------------------- runs
echo "compare.sh: warm-up (discarded)" >&2
for p in "${PROXIES[@]}"; do
  if [ "$TLS_ONLY" = 1 ]; then skip "$p" tls || wrk_run "$p" tls /12 32 1; continue; fi
  if [ "$H2_ONLY" = 1 ]; then h2_run "$p" 32 1; skip "$p" tls || h2_run "$p" 32 1 tls; continue; fi
  wrk_run "$p" h1 /12 32 1
  h2_run "$p" 32 1
  [ "$TAIL" = 1 ] && continue
  wrk_run "$p" h1 /64k 32 1
  skip "$p" tls || { wrk_run "$p" tls /12 32 1; h2_run "$p" 32 1 tls; }
done

for r in $(seq "$ROUNDS"); do
  echo "compare.sh: closed loop, round $r/$ROUNDS" >&2
  for p in "${PROXIES[@]}"; do
    if [ "$TAIL" = 1 ]; then
      # Only nginx's ceilings, which set the open-loop rates.
      [ "$p" = nginx ] || continue
      wrk_run nginx h1 /12 32 "$SECS"; record nginx "h1-12B" "rps_c32" "$r" "$RPS"
      h2_run nginx 32 "$SECS"; record nginx "h2c-12B" "rps_c32" "$r" "$RPS"
      continue
    fi
    if [ "$H2_ONLY" = 1 ]; then
      h2_run "$p" 32 "$SECS"; record "$p" "h2c-12B" "rps_c32" "$r" "$RPS"
      skip "$p" tls || { h2_run "$p" 32 "$SECS" tls; record "$p" "h2-tls-12B" "rps_c32" "$r" "$RPS"; }
      continue
    fi
    if [ "$TLS_ONLY" = 1 ]; then
      skip "$p" tls && continue
      wrk_run "$p" tls /12 32 "$SECS"
      record "$p" "tls-12B" "rps_c32" "$r" "$RPS"; record "$p" "tls-12B" "p99_c32_us" "$r" "$P99_US"
      h2_run "$p" 32 "$SECS" tls; record "$p" "h2-tls-12B" "rps_c32" "$r" "$RPS"
      continue
    fi
    for c in 32 256; do
      wrk_run "$p" h1 /12 "$c" "$SECS"
      record "$p" "h1-12B" "rps_c$c" "$r" "$RPS"; record "$p" "h1-12B" "p99_c${c}_us" "$r" "$P99_US"
      [ "$c" = 32 ] || continue
      record "$p" "h1-12B" "busy_load_c32" "$r" "$LOAD_BUSY"
      [ "$p" = direct ] || record "$p" "h1-12B" "busy_proxy_c32" "$r" "$PROXY_BUSY"
    done
    [ "$QUICK" = 1 ] && continue
    wrk_run "$p" h1 /64k 32 "$SECS"
    record "$p" "h1-64KiB" "rps_c32" "$r" "$RPS"; record "$p" "h1-64KiB" "p99_c32_us" "$r" "$P99_US"
    if ! skip "$p" tls; then
      wrk_run "$p" tls /12 32 "$SECS"
      record "$p" "tls-12B" "rps_c32" "$r" "$RPS"; record "$p" "tls-12B" "p99_c32_us" "$r" "$P99_US"
      h2_run "$p" 32 "$SECS" tls; record "$p" "h2-tls-12B" "rps_c32" "$r" "$RPS"
    fi
    h2_run "$p" 32 "$SECS"
    record "$p" "h2c-12B" "rps_c32" "$r" "$RPS"
  done
done

median() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(int(statistics.median(v)))" "$@"; }
ceiling() { # proxy case: median closed-loop c32 rps
  median $(awk -F'\t' -v p="$1" -v c="$2" '$1 == p && $2 == c && $3 == "rps_c32" {print $5}' "$RES")
}
if [ "$H2_ONLY" = 1 ]; then
  QUICK=1 # the open-loop, memory and change sections are skipped
elif [ "$TLS_ONLY" = 1 ]; then
  for r in $(seq "$ROUNDS"); do
    echo "compare.sh: open loop (TLS), round $r/$ROUNDS" >&2
    for p in "${PROXIES[@]}"; do
      skip "$p" tls && continue
      open_run "$p" tls /12 $(($(ceiling nginx tls-12B) / 2)) "$SECS"
      for m in $OPEN_METRICS; do record "$p" "tls-12B" "${m,,}_at50" "$r" "${!m}"; done
    done
  done
  QUICK=1 # the memory and change sections below are skipped
else
NGX_H1=$(ceiling nginx h1-12B)
NGX_H2=0
[ "$QUICK" = 1 ] || NGX_H2=$(ceiling nginx h2c-12B)
echo "compare.sh: nginx ceilings (12 B, 32 conns): h1 $NGX_H1 rps, h2c $NGX_H2 rps" >&2

LOADS="25 50 75"
[ "$QUICK" = 1 ] && LOADS="50"
[ "$TAIL" = 1 ] && LOADS="50 75"
for r in $(seq "$ROUNDS"); do
  echo "compare.sh: open loop, round $r/$ROUNDS" >&2
  for pct in $LOADS; do
    open_row h1 h1-12B $((NGX_H1 * pct / 100)) "$pct" "$r"
    [ "$QUICK" = 1 ] || [ "$pct" = 25 ] && continue
    open_row h2 h2c-12B $((NGX_H2 * pct / 100)) "$pct" "$r"
  done
  [ "$QUICK" = 1 ] || [ "$TAIL" = 1 ] && continue
  ngx64=$(ceiling nginx h1-64KiB)
  for p in "${PROXIES[@]}"; do
    open_run "$p" h1 /64k $((ngx64 / 2)) "$SECS"
    for m in $OPEN_METRICS; do record "$p" "h1-64KiB" "${m,,}_at50" "$r" "${!m}"; done
    if ! skip "$p" tls; then
      open_run "$p" tls /12 $(($(ceiling nginx tls-12B) / 2)) "$SECS"
      for m in $OPEN_METRICS; do record "$p" "tls-12B" "${m,,}_at50" "$r" "${!m}"; done
    fi
  done
done
[ "$TAIL" = 1 ] && QUICK=1 # the change section below is skipped

fi

if [ "$TLS_ONLY" = 0 ] && [ "$TAIL" = 0 ] && [ "$H2_ONLY" = 0 ]; then
echo "compare.sh: memory" >&2
[ "$QUICK" = 1 ] && IDLE=2000
record all mem idle_connections 1 "$IDLE"
for p in pipe nginx haproxy flipgate; do
  record "$p" "mem" "peak_rss_kib" 1 "$(mem_kib "$p" VmHWM)"
  before=$(mem_kib "$p" VmRSS)
  fifo="$W/idle.$p"; mkfifo "$fifo"
  load "$LOADGEN" --url "$(url_of "$p" h1 /12)" --idle "$IDLE" <"$fifo" >"$W/idle.$p.out" 2>&1 &
  lg=$!
  exec 9>"$fifo"
  for _ in $(seq 600); do grep -q ready "$W/idle.$p.out" 2>/dev/null && break; kill -0 $lg 2>/dev/null || break; sleep 0.05; done
  grep -q ready "$W/idle.$p.out" || abort "idle connections to $p: $(cat "$W/idle.$p.out")"
  after=$(mem_kib "$p" VmRSS)
  exec 9>&-
  wait $lg || true
  record "$p" "mem" "idle_conn_kib" 1 "$(python3 -c "print(round(($after - $before) / $IDLE, 2))")"
done
fi

if [ "$QUICK" = 0 ]; then
  echo "compare.sh: flipgate under change (10 reloads + 10 flips per second)" >&2
  for r in $(seq "$ROUNDS"); do
    wrk_run flipgate h1 /12 32 "$SECS"; record flipgate "change" "steady_rps" "$r" "$RPS"
    # One small process makes the changes (on the load CPU, never the proxy's): starting a curl
    # and a sed per change cost the load generator more throughput than the changes cost flipgate.
    load "$CHURN" --config "$W/fg/flipgate.toml" --file-a "$W/fg/a.toml" --file-b "$W/fg/b.toml" \
      --admin "127.0.0.1:$ADMIN" --route bot --targets green,blue --rate 10 --secs "$((SECS + 1))" \
      >"$W/changes.out" 2>&1 &
    ch=$!
    wrk_run flipgate h1 /12 32 "$SECS"; record flipgate "change" "changing_rps" "$r" "$RPS"
    wait $ch || abort "change driver: $(cat "$W/changes.out")"
    sed -n 's/^changes=\([0-9]*\).*/\1/p' "$W/changes.out" >"$W/changes"
    record flipgate "change" "changes" "$r" "$(cat "$W/changes")"
    # Restore the 5 % sticky canary that the flips reset.
    curl -s -o /dev/null -X POST -d '{"percent":5,"target":"green"}' "http://127.0.0.1:$ADMIN/api/v1/routes/bot/canary"
  done
  gen=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^flipgate_config_generation/ {print $2}')
  echo "compare.sh: flipgate config generation after the change runs: $gen" >&2
fi

# ---------------------------------------------------------------- table
python3 - "$RES" "$QUICK" "$ROUNDS" <<'PY' | tee "${OUT:-/dev/null}"
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p, case, metric, _, v = line.rstrip("\n").split("\t")
    if v != "":
        rows[(p, case, metric)].append(float(v))
med = {k: statistics.median(v) for k, v in rows.items()}
proxies = ["direct", "pipe", "nginx", "haproxy", "flipgate", "nginx-aa"]
def fmt(v):
    return "-" if v is None else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}")
def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}x"
print(f"rounds: {sys.argv[3]}; medians over rounds; ratios are to nginx / to the L4 pipe (limit)")
idle = med.get(("all", "mem", "idle_connections"))
if idle:
    print(f"idle keep-alive client connections for idle_conn_kib: {idle:.0f}")
print(f"{'case':10} {'metric':16} " + " ".join(f"{p:>24}" for p in proxies))
keys = sorted({(c, m) for (p, c, m) in med if p != "all"}, key=lambda k: (k[0], k[1]))
lat_added = lambda m: m.startswith(("p50_at", "p99_at", "p999_at"))
for case, metric in keys:
    cells = []
    ngx = med.get(("nginx", case, metric))
    lim = med.get(("pipe", case, metric))
    for p in proxies:
        v = med.get((p, case, metric))
        if v is None:
            cells.append(f"{'n/a':>24}")
            continue
        if lat_added(metric):
            d = med.get(("direct", case, metric))
            add = None if d is None else v - d
            show = f"+{fmt(add)}" if p != "direct" and add is not None else fmt(v)
            r = "" if p in ("direct",) else f" {ratio(add, None if ngx is None or d is None else ngx - d)}"
            cells.append(f"{show + r:>24}")
        else:
            cells.append(f"{fmt(v) + ' ' + ratio(v, ngx) + '/' + ratio(v, lim):>24}")
    print(f"{case:10} {metric:16} " + " ".join(cells))
print("latency rows (p50/p99/p999 at N % of nginx's ceiling, µs): direct's absolute value, others as added over direct (ratio to nginx's added)")
print("cpu_us rows: proxy CPU µs per request; load_cpu_us: load generator + upstream CPU µs per request;")
print("busy_load/busy_proxy rows: % of the load CPU / of the proxy's CPU in use during the closed-loop run (a proxy whose CPU is not full is bound by the load CPU);")
print("nginx-aa: nginx measured again, last in each turn of the open-loop rows (A/A control: its ratio to nginx is the method's own spread)")
print("segs: TCP segments sent on loopback per request; up_conns: connections the proxy opened per run; mem rows: KiB")
PY
echo "compare.sh: done; raw results in the table above (work dir removed)" >&2
