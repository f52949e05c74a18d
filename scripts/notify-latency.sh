#!/bin/sh
# Alert latency to the desktop: from the start of a suspicious one-liner to
# the app's notification on the session bus, on its way to the desktop's
# notification daemon (the time dbus-monitor receives the Notify call).
#
# Usage: scripts/notify-latency.sh [APP_BINARY] [RUNS] [AGENT_BINARY]
#   APP_BINARY    default target/release/edr-agent-app (built by
#                 `cargo build --release -p edr-agent-app`; this script
#                 builds nothing)
#   RUNS          one-liners measured, default 20
#   AGENT_BINARY  when given, the alerts come from this `edr-agent run` as
#                 the service (its API on a socket in the temp dir) and the
#                 app is its client, as on a desktop with the service
#                 installed; without it the app's embedded engine raises them
#
# It runs under its own Xvfb and private D-Bus session (nothing of the
# caller's desktop is touched), with dunst as the notification daemon and
# dbus-monitor timing every Notify call on the bus. The app runs in the tray
# with a temporary config (its data dir and one watched directory in a temp
# dir, `detection.suppress_window_ms: 0` so every run alerts anew,
# everything else default). Each run starts
# `bash -c 'echo aWQK | base64 -d | sh'` (built-in rules on base64 decoded
# into a shell) and takes the first detection notification after it; the
# start is taken just before the spawn. As root the engine sees processes
# from the kernel's events; otherwise it polls, and short one-liners can be
# missed (then the run times out and says so).
# Needs xvfb-run, dbus-run-session, dbus-monitor, dunst and python3
# (scripts/setup.sh installs them).
set -eu

app=${1:-target/release/edr-agent-app}
runs=${2:-20}
agent=${3:-}

if [ -z "${EDR_NOTIFY_LATENCY_INSIDE:-}" ]; then
    [ -x "$app" ] || { echo "no app binary at $app (cargo build --release -p edr-agent-app)" >&2; exit 1; }
    [ -z "$agent" ] || [ -x "$agent" ] || { echo "no agent binary at $agent" >&2; exit 1; }
    for tool in xvfb-run dbus-run-session dbus-monitor dunst python3; do
        command -v "$tool" >/dev/null || { echo "$tool is needed (scripts/setup.sh)" >&2; exit 1; }
    done
    exec env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY NO_AT_BRIDGE=1 EDR_NOTIFY_LATENCY_INSIDE=1 \
        dbus-run-session -- \
        xvfb-run -a -s "-screen 0 1280x1000x24" "$0" "$app" "$runs" "$agent"
fi

work=$(mktemp -d)
pids=
cleanup() {
    for p in $pids; do
        kill -TERM "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

mkdir -p "$work/data" "$work/watched"
cat >"$work/config.yaml" <<EOF
collectors:
  file_monitor:
    watch_paths: ["$work/watched"]
detection:
  suppress_window_ms: 0
storage:
  local_storage:
    data_dir: "$work/data"
api:
  enabled: $([ -n "$agent" ] && echo true || echo false)
  socket: "$work/api.sock"
EOF
export EDR_APP_CONFIG="$work/config.yaml"

# Waits up to $1 seconds for the command after it to succeed.
wait_until() {
    limit=$1
    shift
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -le $((limit * 10)) ] || return 1
        sleep 0.1
    done
}

has_daemon() {
    dbus-send --session --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.NameHasOwner string:org.freedesktop.Notifications |
        grep -q 'boolean true'
}

dunst >"$work/dunst.log" 2>&1 &
pids="$pids $!"
wait_until 10 has_daemon || { echo "dunst did not take org.freedesktop.Notifications" >&2; exit 1; }

dbus-monitor --session "type='method_call',interface='org.freedesktop.Notifications',member='Notify'" \
    >"$work/monitor.txt" 2>&1 &
pids="$pids $!"

if [ -n "$agent" ]; then
    "$agent" run --config "$work/config.yaml" >"$work/agent.log" 2>&1 &
    pids="$pids $!"
    wait_until 60 test -S "$work/api.sock" || { echo "the service's API did not come up" >&2; tail "$work/agent.log" >&2; exit 1; }
    export EDR_APP_API_SOCKET="$work/api.sock"
fi
"$app" --minimized >"$work/app.log" 2>&1 &
pids="$pids $!"
# The engine is up once it has written its status.
wait_until 60 test -s "$work/data/status.json" || { echo "the app's engine did not start" >&2; tail "$work/app.log" >&2; exit 1; }
# Its first process scan and rule load.
sleep 5
if [ -n "$agent" ]; then
    # Else the embedded engine would be measured under the service's name.
    wait_until 30 grep -q "attached to the edr-agent service" "$work/app.log" ||
        { echo "the app did not attach to the service" >&2; tail "$work/app.log" >&2; exit 1; }
fi

notifies() {
    grep -c 'member=Notify' "$work/monitor.txt" || true
}

: >"$work/starts.txt"
i=1
while [ "$i" -le "$runs" ]; do
    before=$(notifies)
    date +%s.%N >>"$work/starts.txt"
    bash -c "echo aWQK | base64 -d | sh >/dev/null; : notify-latency-$i"
    n=0
    while [ "$(notifies)" -le "$before" ] && [ "$n" -lt 100 ]; do
        n=$((n + 1))
        sleep 0.1
    done
    # Past the run's other alerts, so they are not taken for the next run's.
    sleep 1.5
    i=$((i + 1))
done

if [ -n "$agent" ]; then
    grep -q "running the engine in the app" "$work/app.log" &&
        { echo "the app fell back to its embedded engine: not a measure of the service" >&2; exit 1; }
    echo "alerts from the service ($agent), the app its client"
else
    echo "alerts from the app's embedded engine"
fi
python3 - "$work/starts.txt" "$work/monitor.txt" <<'EOF'
import re, sys

starts = [float(l) for l in open(sys.argv[1]) if l.strip()]
# A method call's header line carries its time; the strings after it are
# app name, icon, summary (title) and body.
calls, cur = [], None
for line in open(sys.argv[2]):
    m = re.match(r"method call time=([0-9.]+) .*member=Notify", line)
    if m:
        cur = {"t": float(m.group(1)), "strings": []}
        calls.append(cur)
        continue
    s = re.match(r'\s+string "(.*)"$', line)
    if cur is not None and s:
        cur["strings"].append(s.group(1))
# Detection notifications; the app's own health alerts are titled
# "EDR Agent alert".
detections = [c for c in calls if len(c["strings"]) >= 3 and c["strings"][2] != "EDR Agent alert"]
lat, missed = [], 0
for i, t0 in enumerate(starts):
    end = starts[i + 1] if i + 1 < len(starts) else float("inf")
    first = next((c["t"] for c in detections if t0 <= c["t"] < end), None)
    if first is None:
        missed += 1
    else:
        lat.append((first - t0) * 1000)
lat.sort()
if not lat:
    print(f"no detection notification in {len(starts)} runs")
    sys.exit(1)
q = lambda p: lat[min(len(lat) - 1, int(round(p * (len(lat) - 1))))]
print(f"start -> Notify call on the session bus, {len(lat)} of {len(starts)} runs ({missed} without one):")
print(f"  median {q(0.5):.0f} ms, p99 {q(0.99):.0f} ms, min {lat[0]:.0f} ms, max {lat[-1]:.0f} ms")
example = next(c for c in detections)
print(f"  e.g. title {example['strings'][2]!r}, body {example['strings'][3] if len(example['strings']) > 3 else ''!r}")
EOF
