#!/usr/bin/env bash
# Installs Mesa's Vulkan drivers, lavapipe (a CPU Vulkan driver) among them, when no Vulkan driver
# is installed; on Debian bookworm from bookworm-backports (Mesa 25, ~5x faster for compute than
# bookworm's Mesa 22.3, which it also upgrades). Idempotent.
# Usage: scripts/install-vulkan.sh [--force]
set -euo pipefail

have_vulkan() {
  ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || return 1
  local icds
  icds=$(ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null || true)
  [ -n "$icds" ] || return 1
  # A vendor's driver (not Mesa's package) is enough.
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null) || return 0
  # Mesa (lavapipe and friends): enough unless it is bookworm's 22.x, ~5x slower than the backport.
  case "$v" in 22.*) return 1 ;; esac
  return 0
}

if [ "${1:-}" != "--force" ] && have_vulkan; then
  echo "install-vulkan: a Vulkan driver is already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

. /etc/os-release
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" |
      $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports \
    mesa-vulkan-drivers libvulkan1 >/dev/null
else
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
echo "install-vulkan: installed $(dpkg-query -W -f='${Package} ${Version}' mesa-vulkan-drivers)"
