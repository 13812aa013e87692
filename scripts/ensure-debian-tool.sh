#!/usr/bin/env bash
# ensure-debian-tool.sh COMMAND [PACKAGE] [WHAT]: install Debian's PACKAGE (default: COMMAND) when
# COMMAND is missing and we may (root + apt); else say which test will be skipped. Never fails.
set -u
command_name="$1"; package="${2:-$1}"; what="${3:-the tests that need $1}"
if command -v "$command_name" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's $package for $what …"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null) \
    || echo "could not install $package: $what will be skipped"
else
  echo "$command_name not found and cannot be installed here: $what will be skipped"
fi
exit 0
