#!/usr/bin/env bash
# Run a command with the local Kafka and PostgreSQL up. If this script started them, it stops
# them afterwards (so CI leaves no process behind); a stack that was already running is reused
# and left running. With a Docker engine, tests use testcontainers instead and this is a no-op.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
STACK="$ROOT/deploy/local/stack.sh"

if docker info >/dev/null 2>&1 && [ "${TNR_TEST_INFRA:-auto}" != "local" ]; then
  exec "$@"
fi

started=0
if ! bash "$STACK" status >/dev/null 2>&1; then
  bash "$STACK" up
  started=1
fi
set -a
# shellcheck disable=SC1091
source "$ROOT/.run/stack.env"
set +a
export TNR_TEST_INFRA=local
status=0
"$@" || status=$?
if [ "$started" = 1 ]; then
  bash "$STACK" down || true
fi
exit "$status"
