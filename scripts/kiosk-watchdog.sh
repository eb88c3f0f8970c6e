#!/bin/sh
# Kiosk watchdog (docs/kiosk.md): restart the kiosk browser when its page is no longer connected.
# A crashed tab ("Aw, Snap!"), a hung renderer or a page stuck on an error all look the same from the
# server: /healthz counts no kiosk page. Run from a systemd timer every 30 s:
#   AVATAR_URL=http://127.0.0.1:8765 UNIT=avatar-kiosk-browser.service kiosk-watchdog.sh
# It restarts the browser unit after GRACE_S seconds without a kiosk connection (state kept in STATE).
set -eu
URL="${AVATAR_URL:-http://127.0.0.1:8765}"
UNIT="${UNIT:-avatar-kiosk-browser.service}"
GRACE_S="${GRACE_S:-60}"
STATE="${STATE:-/run/user/$(id -u)/avatar-kiosk-watchdog}"
now=$(date +%s)
health=$(curl -fsS --max-time 5 "$URL/healthz" || true)
if [ -z "$health" ]; then
  exit 0  # the server itself is down or restarting: its own unit restarts it; the page reconnects
fi
kiosks=$(printf '%s' "$health" | sed -n 's/.*"kiosks": *\([0-9]*\).*/\1/p')
if [ "${kiosks:-0}" -gt 0 ]; then
  rm -f "$STATE"
  exit 0
fi
[ -f "$STATE" ] || echo "$now" > "$STATE"
since=$(cat "$STATE")
if [ $((now - since)) -ge "$GRACE_S" ]; then
  echo "avatar kiosk watchdog: no kiosk page connected for $((now - since)) s; restarting $UNIT"
  rm -f "$STATE"
  systemctl --user restart "$UNIT"
fi
