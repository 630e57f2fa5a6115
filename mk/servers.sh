#!/usr/bin/env bash
# Installs the servers the worker's tests start privately: Redis and
# PostgreSQL, from Debian's packages. Does nothing when both are present, so
# `make test` costs no time on a machine that has them. The tests never use
# the system services these packages may start; each test runs its own
# instance in a temporary folder.
set -euo pipefail

have_postgres() {
	command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_postgres || missing+=(postgresql)
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
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
