#!/usr/bin/env bash
# Install napari-cyclestyle into ./.venv on a fresh Debian/Ubuntu machine.
#   bash scripts/install.sh          the library, the CLI and the napari plugin
#   bash scripts/install.sh --test   the same plus the test tools and an X server (Xvfb)
# Needs root (or sudo) for the Debian packages that napari's Qt and the test X server use.
set -euo pipefail
cd "$(dirname "$0")/.."

# Qt (napari's window) needs these libraries; the GUI tests need an X server (Xvfb).
debian_packages=(libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libdbus-1-3 libfontconfig1
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1)
extras="gui"
if [[ "${1:-}" == "--test" ]]; then
  debian_packages+=(xvfb xauth)
  extras="testing"
fi
if command -v apt-get >/dev/null; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  missing=()
  for package in "${debian_packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if ((${#missing[@]})); then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
fi

python3 -m venv .venv
# torch and torchvision are pinned here (pyproject keeps a range) so that pip takes the
# builds this machine already has instead of downloading a newer release.
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 -e ".[$extras]"
if [[ "$extras" == "testing" ]] && ! command -v Xvfb >/dev/null; then
  echo "Xvfb is missing: the GUI tests would be skipped silently." >&2
  exit 1
fi
