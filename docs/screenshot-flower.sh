#!/usr/bin/env bash
# Regenerate docs/flower.png (and docs/flower-tasks.png): Flower's dashboard during the demo, taken in headless
# Chromium (Debian's `chromium` package). Uses the local PostgreSQL and Redis, like `make demo`.
#   bash docs/screenshot-flower.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT=${FLOWER_SCREENSHOT_PORT:-5599}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}
PROFILE=$(mktemp -d)

"$BIN/seqproc" flower --port "$PORT" 2>/tmp/seqproc-flower-screenshot.log &
FLOWER=$!
DEMO=
cleanup() {
    [ -n "$DEMO" ] && kill "$DEMO" 2>/dev/null || true
    kill "$FLOWER" 2>/dev/null || true
    rm -rf "$PROFILE"
}
trap cleanup EXIT
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$PORT/healthcheck" >/dev/null && break
    sleep 0.2
done

shoot() {  # shoot URL FILE
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
        --user-data-dir="$PROFILE" --window-size=1400,700 --virtual-time-budget=4000 \
        --screenshot="$2" "$1" 2>/dev/null
}

# A long demo (32 threads x 3,000 events), so that the workers are online and busy when the picture is taken.
"$BIN/seqproc" demo --threads 32 --events 3000 >/tmp/seqproc-demo-screenshot.log 2>&1 &
DEMO=$!
sleep "${FLOWER_SCREENSHOT_DELAY_S:-12}"
shoot "http://127.0.0.1:$PORT/" docs/flower.png
shoot "http://127.0.0.1:$PORT/tasks" docs/flower-tasks.png
wait "$DEMO"
DEMO=
tail -n 25 /tmp/seqproc-demo-screenshot.log
echo "wrote docs/flower.png docs/flower-tasks.png"
