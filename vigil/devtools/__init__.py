"""Tools for trying vigil, not the product: the demo, the embedded broker and Redis, the
local Telegram Bot API server, and the replay of recorded telemetry into a topic."""
