#!/usr/bin/env bash
# The gpu image's system layer, run as root on the Debian base: tini as
# PID 1, and the numeric user the pod runs as.
#
# tini: the engine runs in its own process group and may fork helpers
# (compiler workers); when one outlives its parent it is handed to PID 1,
# and the sidecar, which waits only for the engine, would leave it a
# zombie. tini reaps every orphan and passes SIGTERM and SIGHUP on to the
# sidecar.
#
# The user has a passwd entry (Python's getpass, which PyTorch calls for
# its cache folders, fails without one) and /tmp as its home, since the
# root file system is read-only in the pod.
set -euo pipefail

uid=${1:-65532}
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends tini
rm -rf /var/lib/apt/lists/*
groupadd --gid "$uid" vstage
useradd --uid "$uid" --gid "$uid" --no-create-home --home-dir /tmp --shell /usr/sbin/nologin vstage
