#!/usr/bin/env bash
# Installs what building and testing needs and is missing: Debian/Ubuntu
# system packages (WebKitGTK and friends for the desktop app, Xvfb and D-Bus
# for headless tests) and tauri-driver (WebDriver for the app's end-to-end
# tests). Idempotent: a second run installs nothing.
#
#   scripts/setup.sh              everything: the app and the test suite
#   scripts/setup.sh --headless   only what building the agent (`edr-agent`)
#                                 needs: no GUI libraries, Xvfb or WebDriver
set -euo pipefail

HEADLESS_PACKAGES=(
  build-essential pkg-config file
  time procps
)
PACKAGES=(
  "${HEADLESS_PACKAGES[@]}"
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev
  xvfb xauth webkit2gtk-driver dbus dbus-x11 at-spi2-core xdotool imagemagick
  # A notification daemon for the app's notifications under Xvfb
  # (scripts/notify-latency.sh).
  dunst
  nats-server
  # The API and service tests: curl on the socket, users made with
  # useradd/groupadd (passwd) and switched to with runuser (util-linux),
  # systemd-analyze verify on the unit (systemd).
  curl passwd util-linux systemd
  # The eBPF connection source: scripts/build-bpf.sh rebuilds its committed
  # object (a test holds it current); the tests drop capabilities with capsh.
  clang llvm libbpf-dev bpftool libcap2-bin
)

headless=0
if [ "${1:-}" = "--headless" ]; then
  headless=1
  PACKAGES=("${HEADLESS_PACKAGES[@]}")
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$headless" -eq 0 ] && ! command -v tauri-driver >/dev/null 2>&1; then
  echo "setup: installing tauri-driver"
  cargo install --locked --quiet tauri-driver --version '^2'
fi
