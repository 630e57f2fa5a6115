#!/usr/bin/env bash
# Installs the engine's Python environment into the virtual environment
# PREFIX (created when absent) from the hashed lock, then the engine's own
# package. The gpu image runs it into /opt/vstage/venv; make venv runs it
# with --dev into .venv, so every test run uses the install step the image
# uses. A rerun installs only what changed.
#
#   deploy/docker/install-engine.sh [--dev] PREFIX
#
# --dev: python/requirements-dev.lock (the runtime plus the test and lint
# tools) and an editable install of this repository.
# PYTHON names the interpreter that creates the environment (python3.11).
set -euo pipefail

dev=false
if [ "${1:-}" = --dev ]; then
	dev=true
	shift
fi
if [ $# -ne 1 ]; then
	echo "usage: $0 [--dev] PREFIX" >&2
	exit 2
fi
prefix=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python3.11}

if [ ! -x "$prefix/bin/python" ]; then
	"$python" -m venv "$prefix"
fi
pip=("$prefix/bin/python" -m pip --disable-pip-version-check)

if $dev; then
	# Hashes are checked for everything the lock names; --no-deps, because
	# the lock already holds every transitive package, and a package it
	# lacks must fail here rather than arrive unpinned.
	"${pip[@]}" install --require-hashes --no-deps -r "$root/python/requirements-dev.lock"
	# The engine's package itself has no hash to check; its build backend
	# (setuptools) came from the lock, so nothing is fetched for the build.
	"${pip[@]}" install --no-deps --no-build-isolation -e "$root"
else
	# Wheels only: no package's build script runs in the image.
	"${pip[@]}" install --no-cache-dir --require-hashes --no-deps --only-binary :all: \
		-r "$root/python/requirements.lock"
	"${pip[@]}" install --no-cache-dir --no-deps --no-build-isolation "$root"
fi
"${pip[@]}" check
