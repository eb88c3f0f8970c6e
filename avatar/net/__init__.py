"""The network front door: HTTP and the WebSocket loop, the wire protocol, access tokens, limits, metrics,
and the WebSocket media timeline."""
