"""The node's HTTP surface: the aiohttp app and its keys, WebSocket and SSE handlers, the REST and publish
APIs, OpenAPI, health, the demo page."""
