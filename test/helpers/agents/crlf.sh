#!/usr/bin/env bash
# PHASE:done with trailing spaces and CRLF line ends, as an editor on Windows might write it.
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
echo "crlf.sh: writing a CRLF phase file"
printf 'PHASE:done  \r\nReason: with CRLF  \r\n' > "$PHASE_FILE"
