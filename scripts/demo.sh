#!/usr/bin/env bash
# make demo: asr-serve with the bundled model on a free port, a sample clip streamed to it by asr-stream in
# real time (on a terminal the partial transcript updates in place, then the final with word timings), then
# the server stops. MODEL=path/to.pt, CLIP=audio, SERVE_ARGS="--decoder greedy" and STREAM_ARGS="--rate 0 --json"
# change what runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-models/default.pt}
CLIP=${CLIP:-samples/goforward.flac}
[ -f "$MODEL" ] || { echo "demo: no model at $MODEL (make train, or MODEL=path/to.pt)" >&2; exit 1; }
[ -f "$CLIP" ] || { echo "demo: no audio at $CLIP" >&2; exit 1; }

tmp=$(mktemp -d)
server=
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server"  # graceful: health NOT_SERVING, calls drained, exit 0
        wait "$server" || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC2086  # SERVE_ARGS is a list of words
"$PY" -m server.main --model "$MODEL" --port 0 --grace-s 5 ${SERVE_ARGS:-} >"$tmp/out" 2>"$tmp/log" &
server=$!
for _ in $(seq 600); do  # `listening on HOST:PORT` comes at once (port 0: a free one); the model loads after
    grep -q '^listening on ' "$tmp/out" && break
    kill -0 "$server" 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
    sleep 0.1
done
address=$(sed -n 's/^listening on //p' "$tmp/out")
[ -n "$address" ] || { echo "demo: the server did not start" >&2; cat "$tmp/log" >&2; exit 1; }
echo "demo: asr-serve on $address with $MODEL; streaming $CLIP"
# --wait: until health says SERVING (the model has loaded)
# shellcheck disable=SC2086  # STREAM_ARGS is a list of words
"$PY" -m scripts.stream --server "$address" --wait 120 --interim --words ${STREAM_ARGS:-} "$CLIP" || {
    status=$?
    cat "$tmp/log" >&2
    exit "$status"
}
