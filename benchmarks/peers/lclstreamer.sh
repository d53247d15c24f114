#!/usr/bin/env bash
# Run ONE rank of lclstreamer (slac-lcls/lclstreamer or the lclstream/lclstreamer fork) on an XTC2 file:
# psana2 reads detector `fakecam` (det.raw.raw(evt), kept float32) + the event timestamp, one event per
# message (BatchProcessingPipeline batch_size 1), HDF5BinarySerializer without compression, and
# BinaryDataStreamingDataHandler: zmq PUSH, role client (connect) to ENDPOINT. Exits when the run is done.
#
#   benchmarks/peers/lclstreamer.sh VENV XTC2 EVENTS ENDPOINT
#
# VENV: a venv with lclstreamer installed (see benchmarks/peers/README.md). Which fork it holds is detected
# from its config model (the fork requires `distribute` and `buffer` on the handler; upstream forbids them).
# lclstreamer sends no end message: its last message is an ordinary data message, so run photonstream's
# benchmark WITHOUT --peer-end (the stream then ends 3 s after the last message).
# Env: LCLSTREAMER_DETECTOR (default fakecam), LCLSTREAMER_FIELD (default raw.raw),
#      LCLSTREAMER_DTYPE (default float32; lclstreamer itself defaults to float64),
#      LCLSTREAMER_LOG (file for lclstreamer's per-event stdout; default: inherited stdout).
set -euo pipefail
if [ $# -ne 4 ]; then
    echo "usage: $0 VENV XTC2 EVENTS ENDPOINT" >&2
    exit 2
fi
VENV=$1 XTC2=$2 EVENTS=$3 ENDPOINT=$4
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "no python in $VENV" >&2; exit 2; }
[ -r "$XTC2" ] || { echo "cannot read $XTC2" >&2; exit 2; }
XTC2=$(readlink -f "$XTC2")

if "$PY" -c 'import sys; from lclstreamer.models.parameters import BinaryDataStreamingDataHandlerParameters as P; sys.exit(0 if "distribute" in P.model_fields else 1)'; then
    HANDLER_EXTRA=$'      distribute: false\n      buffer: 0'   # lclstream fork: required keys
else
    HANDLER_EXTRA=''                                          # slac-lcls upstream: extra keys forbidden
fi

TMP=$(mktemp -d /tmp/lclstreamer-peer.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/lclstreamer.yaml" <<YAML
source_identifier: files=$XTC2
skip_incomplete_events: true
event_source:
    type: Psana2EventSource
data_sources:
    timestamp:
        type: Psana2Timestamp
    detector_data:
        type: Psana2DetectorInterface
        psana_name: ${LCLSTREAMER_DETECTOR:-fakecam}
        psana_fields: ${LCLSTREAMER_FIELD:-raw.raw}
        dtype: ${LCLSTREAMER_DTYPE:-float32}
processing_pipeline:
    type: BatchProcessingPipeline
    batch_size: 1
data_serializer:
    type: HDF5BinarySerializer
    fields:
        timestamp: /timestamp
        detector_data: /data
data_handlers:
    - type: BinaryDataStreamingDataHandler
      urls:
          - "$ENDPOINT"
      role: client
      library: zmq
      socket_type: push
${HANDLER_EXTRA}
YAML

cd "$TMP"   # lclstreamer writes nothing here, but keep its cwd out of the repo
# lclstreamer_offline.py = lclstreamer's own CLI with psana.DataSource(skip_calib_load='all') (offline psana).
if [ -n "${LCLSTREAMER_LOG:-}" ]; then
    "$PY" "$HERE/lclstreamer_offline.py" --config "$TMP/lclstreamer.yaml" --num-events "$EVENTS" > "$LCLSTREAMER_LOG" 2>&1
else
    "$PY" "$HERE/lclstreamer_offline.py" --config "$TMP/lclstreamer.yaml" --num-events "$EVENTS"
fi
