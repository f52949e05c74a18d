#!/usr/bin/env bash
# Installs what building and testing needs and is missing: Debian/Ubuntu
# system packages (WebKitGTK and friends for the desktop app, Xvfb and D-Bus
# for headless tests) and tauri-driver (WebDriver for the app's end-to-end
# tests). Idempotent: a second run installs nothing.
set -euo pipefail

PACKAGES=(
  build-essential pkg-config file
  libwebkit2gtk-4.1-dev libgtk-3-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev
  xvfb xauth webkit2gtk-driver dbus dbus-x11 at-spi2-core xdotool imagemagick
  time procps
  nats-server
  # The eBPF connection source: scripts/build-bpf.sh rebuilds its committed
  # object (a test holds it current); the tests drop capabilities with capsh.
  clang llvm libbpf-dev bpftool libcap2-bin
)

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

if ! command -v tauri-driver >/dev/null 2>&1; then
  echo "setup: installing tauri-driver"
  cargo install --locked --quiet tauri-driver --version '^2'
fi
