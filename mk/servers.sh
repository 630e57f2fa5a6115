#!/usr/bin/env bash
# Installs the servers the tests start privately, from Debian's packages:
# Redis and PostgreSQL for the worker's tests, and Prometheus for the test
# that loads deploy/prometheus/rules.yaml into a real server scraping a
# sidecar. It also installs ExifTool (not a server, but a tool a test runs:
# internal/disclosure checks with it the metadata a reader sees in its
# output). Does nothing when all are present, so `make test` costs no time on
# a machine that has them. The tests never use the system services these
# packages may start; each test runs its own instance in a temporary folder.
set -euo pipefail

have_postgres() {
	command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v exiftool >/dev/null 2>&1 || missing+=(libimage-exiftool-perl)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
	echo "mk/servers.sh: install ${missing[*]} with your package manager (no apt-get here)" >&2
	exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null 2>&1 || { echo "mk/servers.sh: installing ${missing[*]} needs root or sudo" >&2; exit 1; }
	sudo=(sudo)
fi
echo "mk/servers.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Debian starts a package's service when it installs it; a Prometheus
# service would scrape and keep port 9090 for nothing. Unless the machine
# has its own policy (containers usually forbid every start), ask
# invoke-rc.d not to start that one service during this install.
policy=/usr/sbin/policy-rc.d
if [[ " ${missing[*]} " == *" prometheus "* && ! -e $policy ]]; then
	printf '#!/bin/sh\n[ "$1" = prometheus ] && exit 101\nexit 0\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 755 "$policy"
	trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
