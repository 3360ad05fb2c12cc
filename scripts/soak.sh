#!/usr/bin/env bash
# The soak: the fault suite on three members for SOAK_SECS seconds (default 3600) without
# SIGKILL, plus a topic; every checker green, the topic complete and in order, and each
# member's memory and open files flat at the end (tests/tests/faults/soak.rs). Prints the
# suite's result line and the members' samples; a failure names its seed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CAIRN_SOAK_SECS="${SOAK_SECS:-3600}"
log="${SOAK_LOG:-target/soak.log}"
mkdir -p "$(dirname "$log")"
cargo test -p cairn-tests --test faults --no-run 2>&1 | tail -1
echo "soak: ${CAIRN_SOAK_SECS} s of faults on three members; log in $log"
if cargo test -p cairn-tests --test faults soak -- --ignored --nocapture >"$log" 2>&1; then
  grep -E "fault suite result|soak:" "$log"
  echo "soak passed"
else
  grep -E "panicked|fault suite:|soak:" "$log" | tail -8
  echo "soak failed; full log in $log"
  exit 1
fi
