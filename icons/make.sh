#!/usr/bin/env bash
# Regenerates the PNG icons from icons/src/*.svg (needs rsvg-convert and
# ImageMagick). Tauri wants PNG32 (RGBA); after a change, touch
# src-tauri/tauri.conf.json so Cargo rebuilds the embedded icons.
set -euo pipefail
cd "$(dirname "$0")"
rsvg-convert -w 512 -h 512 src/icon.svg | convert - PNG32:icon.png
rsvg-convert -w 128 -h 128 src/icon.svg | convert - PNG32:128x128.png
rsvg-convert -w 32 -h 32 src/icon.svg | convert - PNG32:32x32.png
for s in running paused alert; do
  # 44 px: a macOS menu bar icon at 2x; Linux panels scale it down.
  rsvg-convert -w 44 -h 44 "src/tray-$s.svg" | convert - PNG32:"tray-$s.png"
done
rsvg-convert -w 64 -h 64 src/icon.svg | convert - PNG32:../ui/icon.png
