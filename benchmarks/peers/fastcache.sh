#!/usr/bin/env bash
# Start lclstream/fastcache (LCLStream's C++ ZeroMQ relay) in the foreground:
#
#   benchmarks/peers/fastcache.sh BUILD_DIR IN_ENDPOINT OUT_ENDPOINT
#
# BUILD_DIR: the fastcache checkout built with its Makefile (binary BUILD_DIR/lclstream-fastcache) or a CMake
# build dir (BUILD_DIR/lclstream-fastcache or BUILD_DIR/build/lclstream-fastcache).
# fastcache BINDS both ends: a PULL at IN_ENDPOINT (producers connect a PUSH there) and a PUSH at OUT_ENDPOINT
# (consumers connect a PULL there). Endpoints must be bindable, e.g. tcp://127.0.0.1:5001 or tcp://*:5001.
# Each ZeroMQ frame is forwarded as its own single-frame message (no header, no multipart: a multipart
# message arrives split into separate messages).
# Its CLI takes only a JSON config file; this script writes one. Env (fastcache's own keys):
#   FASTCACHE_TYPE (4 = lock-free queue, 2 threads, upstream default; 1 = zmq_proxy; 0 = simple loop),
#   FASTCACHE_HWM (default 10), FASTCACHE_IO_THREADS (upstream default 16), FASTCACHE_TIMEOUT_MS (-1 = run
#   forever; >0: exit that long after the last message, type 4 only), FASTCACHE_VERBOSE (false).
# Stop it with SIGTERM (forwarded). SIGINT is not reliable upstream: with timeout -1 the receiver only notices
# after a recv error, and zmq_ctx_term then waits (linger -1) for undelivered messages.
set -euo pipefail
if [ $# -ne 3 ]; then
    echo "usage: $0 BUILD_DIR IN_ENDPOINT OUT_ENDPOINT" >&2
    exit 2
fi
BUILD_DIR=$1 IN=$2 OUT=$3
BIN=
for c in "$BUILD_DIR/lclstream-fastcache" "$BUILD_DIR/build/lclstream-fastcache"; do
    if [ -x "$c" ]; then BIN=$c; break; fi
done
[ -n "$BIN" ] || { echo "no lclstream-fastcache binary in $BUILD_DIR" >&2; exit 2; }

CONF=$(mktemp /tmp/fastcache-peer.XXXXXX.json)
IO_LINE=""
[ -n "${FASTCACHE_IO_THREADS:-}" ] && IO_LINE="\"io_threads\": ${FASTCACHE_IO_THREADS},"
cat > "$CONF" <<JSON
{
  "inurl": "$IN",
  "outurl": "$OUT",
  "type": ${FASTCACHE_TYPE:-4},
  $IO_LINE
  "hwm": ${FASTCACHE_HWM:-10},
  "timeout": ${FASTCACHE_TIMEOUT_MS:--1},
  "verbose": ${FASTCACHE_VERBOSE:-false},
  "metrics": false
}
JSON
"$BIN" "$CONF" &
CHILD=$!
trap 'kill -TERM $CHILD 2>/dev/null; wait $CHILD 2>/dev/null; rm -f "$CONF"; exit 143' TERM INT
set +e
wait $CHILD
RC=$?
rm -f "$CONF"
exit $RC
