"""The kiosk: a face on a screen in a public place (docs/kiosk.md). Presence detection on camera frames and one
visit at a time; it plugs into the server through its message and health hooks."""
