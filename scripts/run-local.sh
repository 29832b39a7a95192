#!/usr/bin/env bash
# `make run`: a local controller with its embedded bbolt store and an agent
# for this host, in the foreground until Ctrl-C. State lives in .run/ and is
# reused on the next run (delete .run/ to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
RUN=${RUN_DIR:-$PWD/.run}
LISTEN=${BUD_LISTEN:-127.0.0.1:7443}
METRICS=${BUD_METRICS_LISTEN:-127.0.0.1:9464}
# With no NVIDIA driver here, the agent simulates a DGX H100 so there is
# something to see; BUD_GPU_BACKEND=nvml|none|mock:dgxa100|... overrides.
if [ -z "${BUD_GPU_BACKEND:-}" ]; then
	if ldconfig -p 2>/dev/null | grep -q libnvidia-ml.so.1; then BUD_GPU_BACKEND=nvml; else BUD_GPU_BACKEND=mock:dgxh100; fi
fi
CTL_DIR=$RUN/controller
AGENT_DIR=$RUN/agent
export BUDCTL_CONFIG=$CTL_DIR/admin.budctl.yaml
mkdir -p "$RUN"

if [ ! -f "$CTL_DIR/ca.crt" ]; then
	"$BIN/bud-controller" init --data-dir "$CTL_DIR" --advertise "$LISTEN" --server-name "$(hostname)"
fi

pids=()
cleanup() {
	trap - INT TERM EXIT
	echo
	echo "stopping..."
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "stopped. State is kept in $RUN; 'make run' again resumes it."
	exit 0
}
trap cleanup INT TERM EXIT

"$BIN/bud-controller" serve --data-dir "$CTL_DIR" --listen "$LISTEN" --metrics-listen "$METRICS" \
	--log-format text 2>"$RUN/controller.log" &
pids+=($!)

for _ in $(seq 100); do
	"$BIN/budctl" tokens list >/dev/null 2>&1 && break
	kill -0 "${pids[0]}" 2>/dev/null || { cat "$RUN/controller.log"; exit 1; }
	sleep 0.1
done

if ! "$BIN/bud-agent" status --state-dir "$AGENT_DIR" >/dev/null 2>&1; then
	token=$("$BIN/budctl" tokens create --ttl 10m --uses 1 --description "make run")
	"$BIN/bud-agent" join --state-dir "$AGENT_DIR" --controller "$LISTEN" --token "$token"
fi

# Read before the agent starts: a running agent holds its state's lock.
node=$("$BIN/bud-agent" status --state-dir "$AGENT_DIR" 2>/dev/null | awk '/^node_id:/{print $2}') || true

"$BIN/bud-agent" run --state-dir "$AGENT_DIR" --gpu-backend "$BUD_GPU_BACKEND" --log-format text 2>"$RUN/agent.log" &
pids+=($!)
for _ in $(seq 100); do
	"$BIN/budctl" nodes get "$node" -o json 2>/dev/null | grep -q NODE_STATUS_READY && break
	kill -0 "${pids[1]}" 2>/dev/null || { cat "$RUN/agent.log"; exit 1; }
	sleep 0.1
done

"$BIN/budctl" nodes list
echo
"$BIN/budctl" gpus summary
cat <<MSG

budfleet is running (Ctrl-C stops both).
  controller   $LISTEN   metrics http://$METRICS/metrics
  state        $CTL_DIR (CA, certificates, controller.db)
               $AGENT_DIR (agent.db: identity and command records)
  GPUs         --gpu-backend $BUD_GPU_BACKEND   ($BIN/budctl gpus list)
  logs         $RUN/controller.log  $RUN/agent.log
  budctl       export BUDCTL_CONFIG=$BUDCTL_CONFIG
               $BIN/budctl nodes list
MSG
wait -n "${pids[@]}" || true
echo "a daemon exited unexpectedly; see $RUN/controller.log and $RUN/agent.log"
exit 1
