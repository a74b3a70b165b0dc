#!/usr/bin/env bash
# Installs the native packages HistoDistill builds against (Debian/Ubuntu), only those that are missing.
# Needs root or sudo. Safe to run again: with everything present it does nothing.
set -euo pipefail
packages=(pkg-config libopenblas-dev libzstd-dev libopenmpi-dev openmpi-bin libjpeg-dev libpng-dev libtiff-dev libopenslide-dev zlib1g-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    sudo_cmd=()
    if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v swift >/dev/null || { echo "setup: swift not found on PATH (Swift 6.0 or newer is required)" >&2; exit 1; }
