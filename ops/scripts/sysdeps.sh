#!/usr/bin/env bash
# System packages the test suite and benchmarks use: redis-server (Feast's Redis online store,
# as in the compose stack), promtool (Prometheus config and rule checks), hey (load generator),
# chromium and chromium-driver (headless browser tests of the API docs, MLflow UI and dbt docs).
# Installed with apt-get when running as root on Debian/Ubuntu; otherwise reports what is missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v hey >/dev/null 2>&1 || need+=(hey)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # the prometheus package starts a server through its service scripts on some systems; we only need promtool
  if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
else
  echo "note: not installed (needs root and apt-get): ${need[*]}; tests that use them will fail." >&2
fi
