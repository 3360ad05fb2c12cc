#!/usr/bin/env bash
# The fault suite's long form: CAIRN_FAULTS_SECS seconds of faults (default 600) on a
# three-member and then a five-member cluster, CAIRN_NETNS_FAULTS faults (default 120) on
# three members in network namespaces, and CAIRN_POWER_CUTS power cuts (default 60; two
# thirds as many for the three-member cluster), ROUNDS times, each round with a fresh seed
# (CAIRN_FAULTS_SEED replays one). Prints each run's result line; a failure names its seed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CAIRN_FAULTS_SECS="${CAIRN_FAULTS_SECS:-600}"
export CAIRN_NETNS_FAULTS="${CAIRN_NETNS_FAULTS:-120}"
export CAIRN_POWER_CUTS="${CAIRN_POWER_CUTS:-60}"
rounds="${ROUNDS:-1}"
log="${FAULTS_LOG:-target/faults-long.log}"
mkdir -p "$(dirname "$log")"
: >"$log"
cargo test -p cairn-tests --test faults --no-run 2>&1 | tail -1
for round in $(seq "$rounds"); do
  echo "round $round of $rounds: ${CAIRN_FAULTS_SECS} s of faults per cluster size"
  cargo test -p cairn-tests --test faults -- --nocapture --test-threads=1 >>"$log" 2>&1 ||
    { grep -E "panicked|fault suite:" "$log" | tail -5; echo "failed; full log in $log"; exit 1; }
  grep -E "fault suite result|namespace faults result|power cuts:" "$log" | tail -5
done
echo "all rounds passed; full log in $log"
