#!/bin/sh
# Memory of the desktop app: RSS, PSS and private memory of every process
# of the app (the app and the WebKit processes it spawns), in the tray
# only, with its dashboard open, and after the dashboard was closed the way
# a window manager's close button closes it (a WM_DELETE_WINDOW message).
#
# Usage: scripts/app-memory.sh [APP_BINARY] [SETTLE_SECONDS] [CYCLES]
#   APP_BINARY      default target/release/edr-agent-app (built by
#                   `cargo build --release -p edr-agent-app`; this script
#                   builds nothing)
#   SETTLE_SECONDS  wait before each measurement, default 30
#   CYCLES          times the dashboard is opened and closed, default 1;
#                   measured open after the first opening and closed after
#                   the last closing
# EDR_APP_ENGINE=off in the environment starts the app without its engine,
# so the difference of two runs is what the engine costs.
#
# APP_BINARY may be `edr-tray` instead (the menu bar without a web engine,
# `cargo build --release -p edr-tray`): then the tray is started as it is,
# the dashboard is opened by clicking "Open Dashboard" in its menu over
# D-Bus (busctl), which starts `edr-agent-app --viewer` from the same
# directory, and closing the window ends that viewer.
#
# It runs under its own Xvfb and private D-Bus session (nothing of the
# caller's desktop is touched), with a temporary config: its data dir and
# one watched directory in a temporary directory, everything else default.
# Needs xvfb-run, dbus-run-session, xdotool and python3.
set -eu

app=${1:-target/release/edr-agent-app}
case $(basename "$app") in
    edr-tray) kind=tray ;;
    *) kind=app ;;
esac
settle=${2:-30}
cycles=${3:-1}
case $cycles in '' | *[!0-9]* | 0) echo "CYCLES must be a whole number of at least 1, not '$cycles'" >&2; exit 1 ;; esac

if [ -z "${EDR_APP_MEMORY_INSIDE:-}" ]; then
    [ -x "$app" ] || { echo "no app binary at $app (cargo build --release -p edr-agent-app)" >&2; exit 1; }
    if [ "$kind" = tray ] && [ ! -x "$(dirname "$app")/edr-agent-app" ]; then
        echo "no edr-agent-app next to $app (the tray's dashboard)" >&2; exit 1
    fi
    for tool in xvfb-run dbus-run-session xdotool python3 busctl; do
        command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
    done
    exec env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY NO_AT_BRIDGE=1 EDR_APP_MEMORY_INSIDE=1 \
        dbus-run-session -- \
        xvfb-run -a -s "-screen 0 1280x1000x24" "$0" "$app" "$settle" "$cycles"
fi

work=$(mktemp -d)
app_pid=
cleanup() {
    if [ -n "$app_pid" ] && kill -0 "$app_pid" 2>/dev/null; then
        kill -TERM "$app_pid"
        wait "$app_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

mkdir -p "$work/data" "$work/watched"
cat >"$work/config.yaml" <<EOF
collectors:
  file_monitor:
    watch_paths: ["$work/watched"]
storage:
  local_storage:
    data_dir: "$work/data"
EOF
export EDR_APP_CONFIG="$work/config.yaml"
export EDR_TRAY_SOCKET="$work/tray.sock"

# The app and all its descendants (WebKit may start its processes through
# helpers such as bwrap), by walking the parent links in /proc.
descendants() {
    awk -v root="$1" '
        FNR == 1 {
            line = $0; sub(/^[0-9]+ \(.*\) /, "", line); split(line, f, " ")
            pid = FILENAME; sub(/^\/proc\//, "", pid); sub(/\/stat$/, "", pid)
            parent[pid] = f[2]
        }
        END {
            keep[root] = 1; n = 1
            while (n) { n = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; n = 1 } }
            for (p in keep) print p
        }' /proc/[0-9]*/stat 2>/dev/null | sort -n
}

# pid, name, RSS, PSS and private memory in KiB, shown in MiB.
row() { awk -v p="$1" -v n="$2" -v r="$3" -v s="$4" -v v="$5" 'BEGIN { printf "%8s  %-22s %10.1f %10.1f %12.1f\n", p, n, r / 1024, s / 1024, v / 1024 }'; }

kib() { awk -v k="$2" '$1 == k":" { print $2; exit }' "$1" 2>/dev/null; }

measure() {
    printf '\n%s (EDR_APP_ENGINE=%s, %s s after the step)\n' "$1" "${EDR_APP_ENGINE:-on}" "$settle"
    printf '%8s  %-22s %10s %10s %12s\n' pid process "RSS MiB" "PSS MiB" "private MiB"
    rss_sum=0
    pss_sum=0
    priv_sum=0
    for pid in $(descendants "$app_pid"); do
        [ -r "/proc/$pid/status" ] || continue
        name=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        rss=$(kib "/proc/$pid/status" VmRSS)
        pss=$(kib "/proc/$pid/smaps_rollup" Pss)
        pclean=$(kib "/proc/$pid/smaps_rollup" Private_Clean)
        pdirty=$(kib "/proc/$pid/smaps_rollup" Private_Dirty)
        # Kernel threads and exited processes have no memory of their own.
        [ -n "$rss" ] && [ -n "$pss" ] && [ -n "$pclean" ] && [ -n "$pdirty" ] || continue
        priv=$((pclean + pdirty))
        rss_sum=$((rss_sum + rss))
        pss_sum=$((pss_sum + pss))
        priv_sum=$((priv_sum + priv))
        row "$pid" "$name" "$rss" "$pss" "$priv"
    done
    row "" total "$rss_sum" "$pss_sum" "$priv_sum"
}

# X windows named like the dashboard.
dashboard_windows() {
    xdotool search --name '^EDR Agent$' 2>/dev/null || true
}

wait_until() {
    what=$1
    shift
    i=0
    while ! "$@"; do
        i=$((i + 1))
        [ "$i" -lt 600 ] || { echo "timed out waiting for $what" >&2; exit 1; }
        sleep 0.1
    done
}

has_dashboard() { [ -n "$(dashboard_windows)" ]; }
no_dashboard() { [ -z "$(dashboard_windows)" ]; }
has_webprocess() { for p in $(descendants "$app_pid"); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = WebKitWebProces ] && return 0; done; return 1; }
no_webprocess() { ! has_webprocess; }
no_viewer() { [ "$kind" = tray ] || return 0; for p in $(descendants "$app_pid"); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = edr-agent-app ] && return 1; done; return 0; }

# The tray's menu item labelled $1, clicked over D-Bus as a panel does.
click_tray() {
    name=org.kde.StatusNotifierItem-$app_pid-1
    id=$(busctl --user call "$name" /MenuBar com.canonical.dbusmenu GetLayout iias -- 0 -1 1 label |
        grep -o "[0-9]* 1 \"label\" s \"$1\"" | cut -d' ' -f1)
    [ -n "$id" ] || { echo "no menu item '$1' in the tray's menu" >&2; exit 1; }
    busctl --user call "$name" /MenuBar com.canonical.dbusmenu Event isvu "$id" clicked i 0 0 >/dev/null
}

# Closes a window the way a window manager's close button does.
close_window() {
    python3 "$(dirname "$0")/close-window.py" "$1"
}

echo "app: $app ($(stat -c %s "$app") bytes)"

# In the tray only: started minimized (the tray: as it is), no window.
if [ "$kind" = tray ]; then
    EDR_TRAY_VIEWER="$(dirname "$app")/edr-agent-app" "$app" >"$work/app.log" 2>&1 &
else
    "$app" --minimized >"$work/app.log" 2>&1 &
fi
app_pid=$!
sleep "$settle"
kill -0 "$app_pid" || { cat "$work/app.log" >&2; exit 1; }
if [ "$kind" = tray ]; then measure "tray only (edr-tray)"; else measure "tray only (started with --minimized)"; fi

cycle=1
while [ "$cycle" -le "$cycles" ]; do
    # Opened: a second launch hands over to the running app, which opens
    # its dashboard, and exits; the tray starts its viewer.
    if [ "$kind" = tray ]; then
        click_tray "Open Dashboard"
    else
        "$app" >>"$work/app.log" 2>&1
    fi
    wait_until "the dashboard window" has_dashboard
    wait_until "the web process" has_webprocess
    if [ "$cycle" -eq 1 ]; then
        sleep "$settle"
        measure "dashboard open"
    else
        # Long enough for the page to load and draw its charts.
        sleep 3
    fi
    # Closed: every window of that name gets WM_DELETE_WINDOW (GTK's
    # toplevel is one of them; the others ignore it).
    for w in $(dashboard_windows); do
        close_window "$w"
    done
    wait_until "the dashboard to close" no_dashboard
    wait_until "the web process to exit" no_webprocess
    wait_until "the viewer to exit" no_viewer
    cycle=$((cycle + 1))
done
sleep "$settle"
if [ "$cycles" -eq 1 ]; then
    measure "dashboard closed (after open and close)"
else
    measure "dashboard closed (after $cycles opens and closes)"
fi
kill -0 "$app_pid" || { echo "the app exited when its window closed" >&2; cat "$work/app.log" >&2; exit 1; }
