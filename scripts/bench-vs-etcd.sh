#!/usr/bin/env bash
# Head-to-head: the same cairn-bench workloads against etcd 3.4 and Cairn, started with the
# same flags on loopback on this machine, in one run; prints the Cairn/etcd ratio per
# workload and writes the table into docs/benchmarks.md.
#
#   scripts/bench-vs-etcd.sh            # 1 member, then 3 members
#   SIZES="1" SCALE=0.2 scripts/bench-vs-etcd.sh   # quicker: 1 member, a fifth of the requests
#   SIZES=3 ONLY='^put' OUT=/tmp/b.md scripts/bench-vs-etcd.sh  # only workloads matching ONLY
#   KEYS=0 scripts/bench-vs-etcd.sh     # without the million-key load and restart (1 member)
#   REPEAT=3 scripts/bench-vs-etcd.sh   # each workload 3 times per server; the median run counts
#   AUTH=0 scripts/bench-vs-etcd.sh     # without the auth-on rows (1 member)
#   BIG=4000000 scripts/bench-vs-etcd.sh  # the big store: keys of 1 KiB written twice (0: skip)
#   LEASES=1000000 STORM_TTL=900 scripts/bench-vs-etcd.sh  # the lease storm's leases (0: skip)
#   FAILOVER_LEASES=100000 scripts/bench-vs-etcd.sh  # live leases in the second failover (0: skip)
#   WATCHERS=100000 scripts/bench-vs-etcd.sh  # watchers on 1,000 streams, 1 member (0: skip)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SIZES="${SIZES:-1 3}"
SCALE="${SCALE:-1}"
OUT="${OUT:-docs/benchmarks.md}"
ONLY="${ONLY:-}"
KEYS="${KEYS:-1000000}"
REPEAT="${REPEAT:-1}"
AUTH="${AUTH:-1}"
BIG="${BIG:-400000}"
LEASES="${LEASES:-100000}"
# The storm's TTL must outlast creating all the leases (etcd on 3 members: ~1,500 leases/s).
STORM_TTL="${STORM_TTL:-120}"
FAILOVER_LEASES="${FAILOVER_LEASES:-100000}"
WATCHERS="${WATCHERS:-100000}"
# The servers to run (both for a table; one alone to measure it again).
KINDS="${KINDS:-etcd cairn}"
CLK_TCK="$(getconf CLK_TCK)"

if ! command -v etcd >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
cargo build --release --quiet --bin cairn --bin cairn-bench
BENCH=target/release/cairn-bench
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    for f in "$WORK"/*.log; do echo "== $f" >&2; tail -n 20 "$f" >&2; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# free_port [taken...]: a port nothing listens on, and none of the ports given (those
# chosen for the same start, not listening yet).
free_port() {
  local p
  while :; do
    # Below the ephemeral range (32768 up), where outgoing connections take their ports.
    p=$((20000 + RANDOM % 12000))
    [[ " $* " == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}

n_of() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s); print (v < 1 ? 1 : v) }'; }

# start_cluster <etcd|cairn> <members>: starts the members, sets ENDPOINTS and SERVER_PIDS.
# With RESTART=1 the members start again on the ports (and data) of the last start;
# START_FLAGS are added to both servers' flags.
start_cluster() {
  local kind="$1" n="$2" i cluster=""
  if [ "${RESTART:-0}" != 1 ]; then
    PEER_PORTS=(); CLIENT_PORTS=()
    for ((i = 0; i < n; i++)); do
      PEER_PORTS+=("$(free_port "${PEER_PORTS[@]}" "${CLIENT_PORTS[@]}")")
      CLIENT_PORTS+=("$(free_port "${PEER_PORTS[@]}" "${CLIENT_PORTS[@]}")")
    done
  fi
  local peers=("${PEER_PORTS[@]}") clients=("${CLIENT_PORTS[@]}")
  for ((i = 0; i < n; i++)); do cluster+="${cluster:+,}m$i=http://127.0.0.1:${peers[$i]}"; done
  SERVER_PIDS=(); ENDPOINTS=""
  for ((i = 0; i < n; i++)); do
    local bin=etcd; [ "$kind" = cairn ] && bin=target/release/cairn
    "$bin" --name "m$i" --data-dir "$WORK/$kind-$n-$i" \
      --listen-client-urls "http://127.0.0.1:${clients[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${clients[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peers[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${peers[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-$kind-$n" \
      --heartbeat-interval 100 --election-timeout 1000 ${START_FLAGS:-} \
      >>"$WORK/$kind-$n-$i.log" 2>&1 &
    SERVER_PIDS+=("$!"); PIDS+=("$!")
    ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:${clients[$i]}"
  done
  # Ready when a write goes through every member (a restart with much data takes a while).
  local ep deadline=$((SECONDS + 180))
  for ep in ${ENDPOINTS//,/ }; do
    while [ "$SECONDS" -lt "$deadline" ]; do
      if "$BENCH" --endpoints "$ep" --total 1 --json put >/dev/null 2>&1; then continue 2; fi
      sleep 0.05
    done
    echo "$kind ($n members): $ep did not start" >&2; exit 1
  done
}

stop_cluster() {
  for p in "${SERVER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# Workloads: label | cairn-bench arguments [| the arguments against etcd, where they
# differ]. Throughput is compared, except for watch workloads, where the p99 put-to-event
# latency is (lower is better).
WORKLOADS=(
  "put, 1 client|--clients 1 --total $(n_of 2000) --key-space-size 100000 put"
  "put, 64 clients|--clients 64 --conns 8 --total $(n_of 20000) --key-space-size 100000 put"
  "put, 256 clients|--clients 256 --conns 16 --total $(n_of 40000) --key-space-size 100000 put"
  "range linearizable, 64 clients|--clients 64 --conns 8 --total $(n_of 40000) range --consistency l"
  "range serializable, 64 clients|--clients 64 --conns 8 --total $(n_of 40000) range --consistency s"
  "txn-put, 64 clients|--clients 64 --conns 8 --total $(n_of 20000) --key-space-size 100000 txn-put"
  "txn-mixed, 16 clients|--clients 16 --conns 4 --total $(n_of 10000) --key-space-size 1000 txn-mixed"
  "watch latency, 1 watcher|--total $(n_of 1000) watch-latency"
  "watch latency, 1000 watchers|--conns 8 --total $(n_of 200) watch --watchers 1000"
  "watch: config propagation to 1000 subscribers, all seen (Config vs plain watches on etcd)|--conns 8 --total $(n_of 200) config-propagation --subscribers 1000|--conns 8 --total $(n_of 200) config-propagation --subscribers 1000 --plain"
  "read a key, 64 clients (Cache vs serializable range on etcd)|--clients 64 --conns 8 --total $(n_of 400000) --key-space-size 1000 cache-read|--clients 64 --conns 8 --total $(n_of 40000) --key-space-size 1000 range --consistency s"
  "lease keep-alive, 16 clients|--clients 16 --conns 4 --total $(n_of 20000) lease-keepalive"
  "lock (recipe Mutex vs etcd Lock service), 8 clients|--clients 8 --duration $(n_of 10) lock"
  "lock service, 8 clients|--clients 8 --duration $(n_of 10) lock --service"
)

# leader_index: the position in SERVER_PIDS / ENDPOINTS of the member that leads now.
leader_index() {
  local eps i=0 ep st
  IFS=, read -r -a eps <<<"$ENDPOINTS"
  for ep in "${eps[@]}"; do
    st="$(ETCDCTL_API=3 etcdctl --endpoints "$ep" endpoint status -w fields 2>/dev/null || true)"
    if [ -n "$st" ] && [ "$(awk -F' : ' '/"MemberID"/ { print $2 }' <<<"$st")" = "$(awk -F' : ' '/"Leader"/ { print $2 }' <<<"$st")" ]; then
      echo "$i"; return
    fi
    i=$((i + 1))
  done
  echo "no leader among $ENDPOINTS" >&2; exit 1
}

# followers_of <leader index>: the other members' endpoints, comma-separated.
followers_of() {
  local eps i out=""
  IFS=, read -r -a eps <<<"$ENDPOINTS"
  for i in "${!eps[@]}"; do [ "$i" = "$1" ] || out+="${out:+,}${eps[$i]}"; done
  echo "$out"
}

# failover: 16 clients write through the followers (100 ms client deadline, then the next
# request) while the leader is SIGKILLed; cairn-bench's JSON reports the longest gap
# between two acknowledged writes.
failover() {
  local leader followers out="$WORK/failover.json" bench_pid
  leader="$(leader_index)"
  followers="$(followers_of "$leader")"
  "$BENCH" --endpoints "$followers" --clients 16 --conns 4 --duration 8 --timeout-ms 100 \
    --key-space-size 100000 --json put >"$out" &
  bench_pid=$!
  sleep 3
  kill -9 "${SERVER_PIDS[$leader]}"
  wait "$bench_pid"
  cat "$out"
}

# failover_with_leases <etcd|cairn> <leases>: on 3 fresh members holding that many live
# leases (a key each, TTL 600 s), the leader is SIGKILLed while 16 clients write and 4
# renew leases back to back through the followers (100 ms client deadline; a broken
# keep-alive stream is opened again). Prints the longest gap between acknowledged writes
# and between answered keep-alives, in ms.
failover_with_leases() {
  local kind="$1" leases="$2" p leader followers writes keeps w k
  for ((p = 0; p < 3; p++)); do rm -rf "$WORK/$kind-3-$p"; done
  start_cluster "$kind" 3
  if [ "$leases" -gt 0 ]; then
    "$BENCH" --endpoints "$ENDPOINTS" --conns 8 --json lease-grant --leases "$leases" --ttl 600 >/dev/null
  fi
  leader="$(leader_index)"
  followers="$(followers_of "$leader")"
  writes="$WORK/failover-writes.json"; keeps="$WORK/failover-keeps.json"
  "$BENCH" --endpoints "$followers" --clients 16 --conns 4 --duration 10 --timeout-ms 100 \
    --key-space-size 100000 --json put >"$writes" &
  w=$!
  "$BENCH" --endpoints "$followers" --clients 4 --conns 2 --duration 10 --timeout-ms 100 \
    --json lease-keepalive >"$keeps" &
  k=$!
  sleep 4
  kill -9 "${SERVER_PIDS[$leader]}"
  wait "$w"; wait "$k"
  stop_cluster
  for ((p = 0; p < 3; p++)); do rm -rf "$WORK/$kind-3-$p"; done
  echo "$(field "$(cat "$writes")" max_gap_ms) $(field "$(cat "$keeps")" max_gap_ms)"
}

# watch_scale <etcd|cairn>: on a fresh member, WATCHERS watchers over 1,000 streams, a key
# each (memory per watcher; put → its watcher; again with a stream that stopped reading),
# then as many on one key (put → the last delivery). Two JSON lines.
watch_scale() {
  local kind="$1" per=$((WATCHERS / 1000))
  rm -rf "$WORK/$kind-1-0"
  start_cluster "$kind" 1
  "$BENCH" --endpoints "$ENDPOINTS" --conns 8 --json watch-scale --streams 1000 --per-stream "$per" \
    --puts 2000 --rss-pid "${SERVER_PIDS[0]}"
  "$BENCH" --endpoints "$ENDPOINTS" --conns 8 --json watch-scale --streams 1000 --per-stream "$per" \
    --puts 100 --mode fan
  stop_cluster
  rm -rf "$WORK/$kind-1-0"
}

# cpu_ms: CPU time (user + system) the running members have used so far, in ms.
cpu_ms() {
  local p t=0
  for p in "${SERVER_PIDS[@]}"; do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $((t * 1000 / CLK_TCK))
}

vm_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# million <etcd|cairn>: on a fresh member, writes KEYS keys of 256 B once each, then records
# the load's throughput, the member's RSS, its data directory, and the time from a restart
# (SIGTERM, wait, start) to the first acknowledged put, and the RSS after that restart.
million() {
  local kind="$1" load t0 ms
  rm -rf "$WORK/$kind-1-0"
  start_cluster "$kind" 1
  load="$("$BENCH" --endpoints "$ENDPOINTS" --clients 256 --conns 16 --total "$KEYS" \
    --key-space-size "$KEYS" --sequential-keys --key-size 16 --val-size 256 --json put)"
  RESULT["$kind|keys-load"]="$(field "$load" throughput)"
  RESULT["$kind|keys-rss"]="$(vm_kb "${SERVER_PIDS[0]}" VmRSS)"
  # Every key at once: one reader paging by 500 as Kubernetes lists (ten took etcd over 15
  # minutes: it counts the rest of the range on every page), one reader, ten; then ten whose
  # answers are counted, not decoded (the client's decoding shares the two cores). Paged
  # first: each reader's peak includes what earlier readers left the allocator holding.
  local spec c p
  for spec in "1 500" "1 0" "10 0" "10 raw"; do
    read -r c p <<<"$spec"
    local how=(--page "$p")
    [ "$p" = raw ] && how=(--page 0 --raw)
    RESULT["$kind|ranges-$c-$p"]="$(timeout 600 "$BENCH" --endpoints "$ENDPOINTS" --conns 10 --json range-full \
      --concurrency "$c" "${how[@]}" --rss-pid "${SERVER_PIDS[0]}" || echo timeout)"
  done
  kill -TERM "${SERVER_PIDS[0]}"; wait "${SERVER_PIDS[0]}" 2>/dev/null || true
  RESULT["$kind|keys-disk"]=$(du -sk "$WORK/$kind-1-0" | cut -f1)
  t0=$(date +%s%N)
  RESTART=1 start_cluster "$kind" 1
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  RESULT["$kind|keys-restart"]="$ms"
  RESULT["$kind|keys-rss-restart"]="$(vm_kb "${SERVER_PIDS[0]}" VmRSS)"
  stop_cluster
  rm -rf "$WORK/$kind-1-0"
}

# longest_put <seconds> <command...>: one client puts for <seconds> while the command runs
# (after 2 s); prints "<command's ms> <longest put ms> <put p99 ms>".
longest_put() {
  local secs="$1" out="$WORK/longest.json" bench_pid t0 took; shift
  "$BENCH" --endpoints "$ENDPOINTS" --clients 1 --duration "$secs" --key-space-size 1000 \
    --val-size 1024 --json put >"$out" &
  bench_pid=$!
  sleep 2
  t0=$(date +%s%N)
  "$@" >/dev/null
  took=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ $((took + 2000)) -gt $((secs * 1000)) ]; then
    echo "longest_put: '$*' outlasted the putting client (${took} ms); its longest put is of the first $((secs - 2)) s" >&2
  fi
  wait "$bench_pid"
  echo "$took $(field "$(cat "$out")" max_ms) $(field "$(cat "$out")" p99_ms)"
}

# storm <etcd|cairn> <members>: on fresh members, LEASES leases of STORM_TTL s with a key each,
# renewed once from 64 streams, then left to expire while another client puts; the bench's
# JSON line, then the highest peak RSS of the members (KiB).
storm() {
  local kind="$1" n="$2" out p r rss=0
  for ((p = 0; p < n; p++)); do rm -rf "$WORK/$kind-$n-$p"; done
  start_cluster "$kind" "$n"
  out="$("$BENCH" --endpoints "$ENDPOINTS" --conns 8 --json lease-storm --leases "$LEASES" --ttl "$STORM_TTL" --streams 64 --give-up 300)" || out="{}"
  for p in "${SERVER_PIDS[@]}"; do r=$(vm_kb "$p" VmHWM); [ "$r" -gt "$rss" ] && rss=$r; done
  stop_cluster
  for ((p = 0; p < n; p++)); do rm -rf "$WORK/$kind-$n-$p"; done
  echo "$out $rss"
}

# settled_size <dir>: the directory's size in KiB once it has not changed for 5 s (the
# storage engine deletes replaced files in the background), waiting at most 120 s.
settled_size() {
  local last=-1 now same=0 i
  for ((i = 0; i < 120 && same < 5; i++)); do
    now=$(du -sk "$1" | cut -f1)
    if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; fi
    last=$now; sleep 1
  done
  echo "$last"
}

# big_store <etcd|cairn>: on a fresh member, BIG keys of 1 KiB written twice (the load's
# rate, the member's RSS and data directory after it); a restart (SIGTERM, start, the first
# acknowledged put); then, each while one client puts, a compaction of the first versions
# (waiting for its physical end) and a defragmentation: how long each took and the longest
# put during it (the pause users feel); and the data directory after both (once the engine
# let go of old files). The quota is 16 GiB on both: the default 2 GiB holds 1.6 M such keys.
big_store() {
  local kind="$1" rev r ctl load t0 quota=17179869184
  local -x START_FLAGS="--quota-backend-bytes $quota"
  rm -rf "$WORK/$kind-1-0"
  start_cluster "$kind" 1
  ctl=(env ETCDCTL_API=3 etcdctl --command-timeout 600s --endpoints "$ENDPOINTS")
  for r in 1 2; do
    load="$("$BENCH" --endpoints "$ENDPOINTS" --clients 256 --conns 16 --total "$BIG" --key-space-size "$BIG" \
      --sequential-keys --key-size 16 --val-size 1024 --json put)"
    RESULT["$kind|big-load-$r"]="$(field "$load" throughput)"
  done
  RESULT["$kind|big-rss"]="$(vm_kb "${SERVER_PIDS[0]}" VmRSS)"
  rev="$("${ctl[@]}" get x -w json | sed -E 's/.*"revision":([0-9]+).*/\1/')"
  kill -TERM "${SERVER_PIDS[0]}"; wait "${SERVER_PIDS[0]}" 2>/dev/null || true
  RESULT["$kind|big-disk-load"]=$(du -sk "$WORK/$kind-1-0" | cut -f1)
  t0=$(date +%s%N)
  RESTART=1 start_cluster "$kind" 1
  RESULT["$kind|big-restart"]=$(( ($(date +%s%N) - t0) / 1000000 ))
  RESULT["$kind|big-rss-restart"]="$(vm_kb "${SERVER_PIDS[0]}" VmRSS)"
  # What the loads and the restart left for the engine to flush settles first.
  longest_put 8 true >/dev/null
  # The putting client must outlast the command: about 12 s per 400,000 keys for etcd's
  # compaction, the slower of the two.
  local secs=$((15 + BIG / 20000))
  read -r RESULT["$kind|big-compact-ms"] RESULT["$kind|big-compact-max"] _ \
    <<<"$(longest_put "$secs" "${ctl[@]}" compaction --physical "$rev")"
  read -r RESULT["$kind|big-defrag-ms"] RESULT["$kind|big-defrag-max"] _ \
    <<<"$(longest_put "$secs" "${ctl[@]}" defrag)"
  RESULT["$kind|big-disk"]=$(settled_size "$WORK/$kind-1-0")
  stop_cluster
  rm -rf "$WORK/$kind-1-0"
}

# AUTH_WORKLOADS: what the auth rows run, as a user with read and write on every key (not
# root, whose requests skip the permission check).
AUTH_WORKLOADS=(
  "put, 64 clients|--clients 64 --conns 8 --total $(n_of 20000) --key-space-size 100000 put"
  "range linearizable, 64 clients|--clients 64 --conns 8 --total $(n_of 40000) range --consistency l"
  "Authenticate (bcrypt cost 10), 16 clients|--clients 16 --conns 4 --duration $(n_of 5) authenticate"
)

# with_auth <etcd|cairn>: on a fresh member with auth on, the AUTH_WORKLOADS as user bench.
with_auth() {
  local kind="$1" w label args ctl
  rm -rf "$WORK/$kind-1-0"
  start_cluster "$kind" 1
  ctl=(env ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS")
  "${ctl[@]}" user add root:rootpw >/dev/null
  "${ctl[@]}" user grant-role root root >/dev/null
  "${ctl[@]}" role add bench >/dev/null
  "${ctl[@]}" role grant-permission bench readwrite "" --prefix >/dev/null
  "${ctl[@]}" user add bench:benchpw >/dev/null
  "${ctl[@]}" user grant-role bench bench >/dev/null
  "${ctl[@]}" auth enable >/dev/null
  for w in "${AUTH_WORKLOADS[@]}"; do
    label="${w%%|*}"; args="${w#*|}"
    if [ -n "$ONLY" ] && ! [[ "auth: $label" =~ $ONLY ]]; then continue; fi
    echo "[1 member] $kind, auth on: $label" >&2
    runs=()
    for ((r = 0; r < REPEAT; r++)); do
      # shellcheck disable=SC2086
      runs+=("$("$BENCH" --endpoints "$ENDPOINTS" --user bench:benchpw --json $args)")
    done
    RESULT["$kind|auth: $label"]="$(median_run throughput "${runs[@]}")"
  done
  stop_cluster
  rm -rf "$WORK/$kind-1-0"
}

field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"$1"; }

# ratio <cairn> <etcd>: Cairn's value over etcd's, two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# row <members> <workload> <unit> <etcd> <cairn>: one line of the table.
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 | $(ratio "$5" "$4") |"); }

# compared <label>: the JSON field a workload is compared by (lower is better for watch).
compared() { if [[ "$1" == watch* ]]; then echo p99_ms; else echo throughput; fi; }

# median_run <field> <json>...: the run whose <field> is the median (the lower middle one
# of an even count).
median_run() {
  local f="$1" n l; shift; n=$#
  for l in "$@"; do echo "$(field "$l" "$f") $l"; done | sort -g |
    awk -v k=$(((n + 1) / 2)) 'NR == k { sub(/^[^ ]+ /, ""); print }'
}

ROWS=()
for n in $SIZES; do
  declare -A RESULT=()
  for kind in $KINDS; do
    start_cluster "$kind" "$n"
    for w in "${WORKLOADS[@]}"; do
      label="${w%%|*}"; args="${w#*|}"
      if [[ "$args" == *"|"* ]]; then
        if [ "$kind" = etcd ]; then args="${args#*|}"; else args="${args%%|*}"; fi
      fi
      if [ -n "$ONLY" ] && ! [[ "$label" =~ $ONLY ]]; then continue; fi
      # The recipe Mutex runs only on the client side of Cairn; against etcd the lock row
      # measures etcd's own Lock service, the way its users take a lock.
      if [ "$kind" = etcd ] && [[ "$args" == *" lock" ]]; then args="$args --service"; fi
      echo "[$n member(s)] $kind: $label" >&2
      runs=(); ops=0; cpu0=$(cpu_ms)
      for ((r = 0; r < REPEAT; r++)); do
        # shellcheck disable=SC2086
        runs+=("$("$BENCH" --endpoints "$ENDPOINTS" --json $args)")
        ops=$((ops + $(field "${runs[-1]}" ops)))
      done
      # The members' CPU over all the runs of the workload, per 10,000 operations.
      RESULT["$kind|cpu|$label"]="$(awk -v ms=$(($(cpu_ms) - cpu0)) -v n="$ops" 'BEGIN { printf "%.0f", (n > 0 ? ms * 10000 / n : 0) }')"
      RESULT["$kind|$label"]="$(median_run "$(compared "$label")" "${runs[@]}")"
      if [ "$n" = 1 ] && [ "$label" = "put, 1 client" ]; then
        RESULT["$kind|floor"]="$("$BENCH" --endpoints "$ENDPOINTS" --json floor --dir "$WORK/$kind-1-0")"
      fi
    done
    rss=0; for p in "${SERVER_PIDS[@]}"; do r=$(vm_kb "$p" VmHWM); [ "$r" -gt "$rss" ] && rss=$r; done
    RESULT["$kind|rss"]=$rss
    RESULT["$kind|disk"]=$(du -sk "$WORK/$kind-$n-0" | cut -f1)
    if [ "$n" -ge 3 ]; then
      echo "[$n members] $kind: leader failover" >&2
      RESULT["$kind|failover"]="$(failover)"
    fi
    stop_cluster
    if [ "$n" = 1 ] && [ "$KEYS" -gt 0 ]; then
      echo "[1 member] $kind: $KEYS keys, then a restart" >&2
      million "$kind"
    fi
    if [ "$n" = 1 ] && [ "$AUTH" != 0 ]; then with_auth "$kind"; fi
    if [ "$n" = 1 ] && [ "$BIG" -gt 0 ]; then
      echo "[1 member] $kind: $BIG keys of 1 KiB twice, compaction and defrag under writes" >&2
      big_store "$kind"
    fi
    if [ "$n" -ge 3 ] && [ "$FAILOVER_LEASES" -gt 0 ]; then
      echo "[3 members] $kind: leader failover with no leases, then with $FAILOVER_LEASES" >&2
      RESULT["$kind|failover-0"]="$(failover_with_leases "$kind" 0)"
      RESULT["$kind|failover-leases"]="$(failover_with_leases "$kind" "$FAILOVER_LEASES")"
    fi
    if [ "$n" = 1 ] && [ "$WATCHERS" -gt 0 ]; then
      echo "[1 member] $kind: $WATCHERS watchers" >&2
      RESULT["$kind|watchers"]="$(watch_scale "$kind")"
    fi
    if [ "$LEASES" -gt 0 ]; then
      echo "[$n member(s)] $kind: lease storm, $LEASES leases" >&2
      RESULT["$kind|storm"]="$(storm "$kind" "$n")"
    fi
  done
  # With one server in KINDS, the other one's cells read 0.
  for key in "${!RESULT[@]}"; do
    for k in etcd cairn; do
      [ -n "${RESULT["$k|${key#*|}"]+set}" ] || RESULT["$k|${key#*|}"]=0
    done
  done
  for w in "${WORKLOADS[@]}"; do
    label="${w%%|*}"; e="${RESULT["etcd|$label"]:-}"; c="${RESULT["cairn|$label"]:-}"
    if [ -z "$e" ] || [ -z "$c" ]; then continue; fi
    f="$(compared "$label")"; unit="ops/s"; [ "$f" = p99_ms ] && unit="p99 ms"
    row "$n" "$label" "$unit" "$(field "$e" "$f")" "$(field "$c" "$f")"
  done
  for w in "${WORKLOADS[@]}"; do
    label="${w%%|*}"
    [[ "$label" =~ ^(put|range|txn) ]] || continue
    e="${RESULT["etcd|cpu|$label"]:-}"; c="${RESULT["cairn|cpu|$label"]:-}"
    if [ -z "$e" ] || [ -z "$c" ]; then continue; fi
    row "$n" "members' CPU per 10,000 ops: $label" "ms" "$e" "$c"
  done
  e="${RESULT["etcd|floor"]:-}"; c="${RESULT["cairn|floor"]:-}"
  pe="${RESULT["etcd|put, 1 client"]:-}"; pc="${RESULT["cairn|put, 1 client"]:-}"
  if [ -n "$e" ] && [ -n "$c" ] && [ -n "$pe" ] && [ -n "$pc" ]; then
    row 1 "put, 1 client: mean latency" ms "$(field "$pe" avg_ms)" "$(field "$pc" avg_ms)"
    row 1 "the same: its floor, one fdatasync + one round trip (mean of each)" ms "$(field "$e" floor_ms)" "$(field "$c" floor_ms)"
    row 1 "the same: mean latency over the floor" ratio \
      "$(ratio "$(field "$pe" avg_ms)" "$(field "$e" floor_ms)")" "$(ratio "$(field "$pc" avg_ms)" "$(field "$c" floor_ms)")"
  fi
  row "$n" "peak RSS of a member" MiB "$((RESULT["etcd|rss"] / 1024))" "$((RESULT["cairn|rss"] / 1024))"
  if [ "$n" = 1 ] && [ "$KEYS" -gt 0 ]; then
    row 1 "$KEYS keys of 256 B: load, 256 clients" "puts/s" "${RESULT["etcd|keys-load"]}" "${RESULT["cairn|keys-load"]}"
    row 1 "$KEYS keys: RSS after the load" MiB "$((RESULT["etcd|keys-rss"] / 1024))" "$((RESULT["cairn|keys-rss"] / 1024))"
    row 1 "$KEYS keys: data dir" MiB "$((RESULT["etcd|keys-disk"] / 1024))" "$((RESULT["cairn|keys-disk"] / 1024))"
    row 1 "$KEYS keys: restart to the first acknowledged put" ms "${RESULT["etcd|keys-restart"]}" "${RESULT["cairn|keys-restart"]}"
    for spec in "1 500|one full range paged by 500 (as Kubernetes lists)" "1 0|one full range" \
      "10 0|ten concurrent full ranges" "10 raw|ten concurrent full ranges, answers counted not decoded"; do
      k="${spec%%|*}"; k="${k// /-}"
      e="${RESULT["etcd|ranges-$k"]}"; c="${RESULT["cairn|ranges-$k"]}"
      # A reader that did not finish within 600 s shows as 600 s and no RSS.
      for v in e c; do
        [ "${!v}" = timeout ] && printf -v "$v" '%s' '{"seconds":600,"peak_rss_kib":0,"server_cpu_ms":0}'
      done
      row 1 "$KEYS keys: ${spec#*|}, wall" s "$(field "$e" seconds)" "$(field "$c" seconds)"
      row 1 "the same: member peak RSS" MiB "$(( $(field "$e" peak_rss_kib) / 1024 ))" "$(( $(field "$c" peak_rss_kib) / 1024 ))"
      row 1 "the same: member CPU" ms "$(field "$e" server_cpu_ms)" "$(field "$c" server_cpu_ms)"
    done
    row 1 "$KEYS keys: RSS after the restart" MiB "$((RESULT["etcd|keys-rss-restart"] / 1024))" "$((RESULT["cairn|keys-rss-restart"] / 1024))"
  fi
  if [ "$n" = 1 ] && [ "$AUTH" != 0 ]; then
    for w in "${AUTH_WORKLOADS[@]}"; do
      label="${w%%|*}"; e="${RESULT["etcd|auth: $label"]:-}"; c="${RESULT["cairn|auth: $label"]:-}"
      if [ -z "$e" ] || [ -z "$c" ]; then continue; fi
      row 1 "auth on: $label" "ops/s" "$(field "$e" throughput)" "$(field "$c" throughput)"
      # Each server against itself with auth off (the goal: Cairn keeps 0.9 or more).
      off_e="${RESULT["etcd|$label"]:-}"; off_c="${RESULT["cairn|$label"]:-}"
      if [ -n "$off_e" ] && [ -n "$off_c" ]; then
        row 1 "auth on / auth off: $label" "ratio" \
          "$(ratio "$(field "$e" throughput)" "$(field "$off_e" throughput)")" \
          "$(ratio "$(field "$c" throughput)" "$(field "$off_c" throughput)")"
      fi
    done
  fi
  if [ "$n" = 1 ] && [ "$BIG" -gt 0 ]; then
    row 1 "$BIG keys of 1 KiB: load, 256 clients" "puts/s" "${RESULT["etcd|big-load-1"]}" "${RESULT["cairn|big-load-1"]}"
    row 1 "the same keys again" "puts/s" "${RESULT["etcd|big-load-2"]}" "${RESULT["cairn|big-load-2"]}"
    row 1 "the same: RSS after both loads" MiB "$((RESULT["etcd|big-rss"] / 1024))" "$((RESULT["cairn|big-rss"] / 1024))"
    row 1 "the same: data dir" MiB "$((RESULT["etcd|big-disk-load"] / 1024))" "$((RESULT["cairn|big-disk-load"] / 1024))"
    row 1 "the same: restart to the first acknowledged put" ms "${RESULT["etcd|big-restart"]}" "${RESULT["cairn|big-restart"]}"
    row 1 "the same: RSS after the restart" MiB "$((RESULT["etcd|big-rss-restart"] / 1024))" "$((RESULT["cairn|big-rss-restart"] / 1024))"
    row 1 "$BIG keys × 2 of 1 KiB: compaction of the first versions" ms "${RESULT["etcd|big-compact-ms"]}" "${RESULT["cairn|big-compact-ms"]}"
    row 1 "the same: longest put during it (1 client)" ms "${RESULT["etcd|big-compact-max"]}" "${RESULT["cairn|big-compact-max"]}"
    row 1 "then defragmentation" ms "${RESULT["etcd|big-defrag-ms"]}" "${RESULT["cairn|big-defrag-ms"]}"
    row 1 "the same: longest put during it (1 client)" ms "${RESULT["etcd|big-defrag-max"]}" "${RESULT["cairn|big-defrag-max"]}"
    row 1 "data dir after both" MiB "$((RESULT["etcd|big-disk"] / 1024))" "$((RESULT["cairn|big-disk"] / 1024))"
  fi
  if [ "$n" = 1 ] && [ "$WATCHERS" -gt 0 ]; then
    e1="$(head -1 <<<"${RESULT["etcd|watchers"]}")"; c1="$(head -1 <<<"${RESULT["cairn|watchers"]}")"
    ef="$(tail -1 <<<"${RESULT["etcd|watchers"]}")"; cf="$(tail -1 <<<"${RESULT["cairn|watchers"]}")"
    row 1 "$WATCHERS watchers on 1,000 streams, a key each: member memory per watcher" B "$(field "$e1" bytes_per_watcher)" "$(field "$c1" bytes_per_watcher)"
    row 1 "the same: put → its one watcher, p99" ms "$(field "$e1" p99_ms)" "$(field "$c1" p99_ms)"
    row 1 "the same, with one more stream (its own connection) that stopped reading: p99" ms "$(field "$e1" p99_with_slow_stream_ms)" "$(field "$c1" p99_with_slow_stream_ms)"
    row 1 "the same: p99 with the stopped stream over without" ratio \
      "$(ratio "$(field "$e1" p99_with_slow_stream_ms)" "$(field "$e1" p99_ms)")" "$(ratio "$(field "$c1" p99_with_slow_stream_ms)" "$(field "$c1" p99_ms)")"
    row 1 "$WATCHERS watchers of one key: put → the last delivery, p99" ms "$(field "$ef" p99_ms)" "$(field "$cf" p99_ms)"
  fi
  if [ "$LEASES" -gt 0 ]; then
    e="${RESULT["etcd|storm"]}"; c="${RESULT["cairn|storm"]}"
    gone() { local g; g=$(sed -E 's/.*"gone_after_deadline_ms":([0-9.]+|null).*/\1/' <<<"$1"); [ "$g" = null ] && echo ">300000" || echo "$g"; }
    row "$n" "lease storm, $LEASES leases of $STORM_TTL s: keep-alives per second (64 streams)" "1/s" "$(field "$e" keepalives_per_sec)" "$(field "$c" keepalives_per_sec)"
    row "$n" "the same: last key gone after the deadline" ms "$(gone "$e")" "$(gone "$c")"
    row "$n" "the same: another client's put p99 before the storm" ms "$(field "$e" put_p99_before_ms)" "$(field "$c" put_p99_before_ms)"
    row "$n" "the same: its put p99 during the storm" ms "$(field "$e" put_p99_during_ms)" "$(field "$c" put_p99_during_ms)"
    row "$n" "the same: member peak RSS" MiB "$(( ${e##* } / 1024 ))" "$(( ${c##* } / 1024 ))"
  fi
  if [ "$n" -ge 3 ]; then
    row "$n" "leader failover (SIGKILL) under 16 writers: longest gap between acks" ms \
      "$(field "${RESULT["etcd|failover"]}" max_gap_ms)" "$(field "${RESULT["cairn|failover"]}" max_gap_ms)"
  fi
  if [ "$n" -ge 3 ] && [ "$FAILOVER_LEASES" -gt 0 ]; then
    read -r e0w e0k <<<"${RESULT["etcd|failover-0"]}"; read -r c0w c0k <<<"${RESULT["cairn|failover-0"]}"
    read -r elw elk <<<"${RESULT["etcd|failover-leases"]}"; read -r clw clk <<<"${RESULT["cairn|failover-leases"]}"
    row "$n" "leader failover (SIGKILL), no leases: longest gap between acknowledged writes (16 clients)" ms "$e0w" "$c0w"
    row "$n" "the same: longest gap between answered keep-alives (4 clients)" ms "$e0k" "$c0k"
    row "$n" "leader failover with $FAILOVER_LEASES live leases: longest gap between acknowledged writes" ms "$elw" "$clw"
    row "$n" "the same: longest gap between answered keep-alives" ms "$elk" "$clk"
    row "$n" "with $FAILOVER_LEASES leases over with none: writes" ratio "$(ratio "$elw" "$e0w")" "$(ratio "$clw" "$c0w")"
    row "$n" "with $FAILOVER_LEASES leases over with none: keep-alives" ratio "$(ratio "$elk" "$e0k")" "$(ratio "$clk" "$c0k")"
  fi
  row "$n" "data dir of a member" MiB "$((RESULT["etcd|disk"] / 1024))" "$((RESULT["cairn|disk"] / 1024))"
  unset RESULT
done

TABLE="| members | workload | unit | etcd 3.4 | Cairn | Cairn / etcd |
| --- | --- | --- | --- | --- | --- |
$(printf '%s\n' "${ROWS[@]}")"
echo "$TABLE"

# Hand-written analysis below the table (from the marker on) survives a new run.
MARKER="<!-- analysis: kept across runs of scripts/bench-vs-etcd.sh -->"
KEPT=""
if [ -f "$OUT" ] && grep -qF "$MARKER" "$OUT"; then KEPT="$(awk -v m="$MARKER" 'index($0, m) { on = 1 } on' "$OUT")"; fi
MACHINE="$(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(free -g | awk '/Mem:/ { print $2 }') GiB, $(uname -sr)"
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`scripts/bench-vs-etcd.sh\` (SCALE=$SCALE, REPEAT=$REPEAT: the median of that many runs per row) on $(date -u +%Y-%m-%d): $MACHINE;"
  echo "$(etcd --version | head -1) and Cairn $(git rev-parse --short HEAD), same flags, loopback, one run."
  echo "Ratios above 1 favour Cairn for throughput (ops/s, puts/s, 1/s); for every other unit"
  echo "(latency, time, memory, CPU, size, and the \"ratio\" rows, each server against itself)"
  echo "below 1 favours Cairn. Absolute numbers on shared machines are noise; the ratios within"
  echo "one run are what to read."
  echo
  echo "$TABLE"
  if [ -n "$KEPT" ]; then echo; echo "$KEPT"; fi
} >"$OUT"
echo "written to $OUT" >&2
