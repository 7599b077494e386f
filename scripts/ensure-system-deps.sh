#!/usr/bin/env bash
# Installs the real services the project runs (Mosquitto, InfluxDB 1.x `influxd`, Chromium for the live page's
# browser test) from Debian's packages when their
# binaries are missing. Fast and silent when everything is there, so `make` can call it every time.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have mosquitto || missing+=(mosquitto)
have mosquitto_sub || missing+=(mosquitto-clients)
have influxd || missing+=(influxdb)
# The live page's browser test runs Debian's chromium headless (through Playwright, no browser download).
have chromium || missing+=(chromium)
# Debian's python3 ships venv separately; the project's venv needs it.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)

[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "energyhub needs these packages, and this is not a Debian/Ubuntu system: ${missing[*]}" >&2
  echo "Install Mosquitto 2.x and InfluxDB 1.x (influxd) with your package manager, then run make again." >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "energyhub needs Debian packages that are not installed: ${missing[*]}" >&2
  echo "Run:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  echo "then run make again." >&2
  exit 1
fi

echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Debian may also start the packages' system services on their default ports; energyhub never uses those: it
# starts its own instances on its own ports under its state directory.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "Installed: ${missing[*]}"
