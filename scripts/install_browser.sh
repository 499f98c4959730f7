#!/usr/bin/env bash
# The browser tests (tests/app/test_console_browser.py) drive Debian's chromium through its
# chromedriver; nothing downloads a browser build. Installs both once, where apt can.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium and chromium-driver for the browser tests..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
else
  echo "the browser tests need /usr/bin/chromium and /usr/bin/chromedriver: sudo apt-get install chromium chromium-driver" >&2
  exit 1
fi
