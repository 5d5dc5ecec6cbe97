#!/usr/bin/env bash
# Writes PHASE:failed with a reason, exits 0.
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
echo "fail.sh: running the tests"
echo "fail.sh: 3 tests failed" >&2
printf 'PHASE:failed\nReason: tests are red\n' > "$PHASE_FILE.tmp" && mv "$PHASE_FILE.tmp" "$PHASE_FILE"
echo "fail.sh: exiting 0"
