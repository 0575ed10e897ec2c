"""A local Telegram Bot API server for tests, benchmarks and trying alerts offline.

It speaks the methods vigil uses — ``sendMessage``, ``sendPhoto``, ``answerCallbackQuery``,
``getMe`` and ``getUpdates`` (long polling, as aiogram's dispatcher does) — over real HTTP, so
aiogram talks to it exactly as it talks to ``api.telegram.org`` (point
``alerts.telegram.api_url`` at :attr:`BotAPIServer.url`). It records every request, can fail
the next requests on demand, and can simulate a button press.

>>> server = BotAPIServer().start()
>>> server.url.startswith("http://127.0.0.1:")
True
>>> server.stop()
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["BotAPIServer", "SentMessage"]


@dataclass
class SentMessage:
    """One sendMessage/sendPhoto request the server received."""

    method: str
    chat_id: int
    message_id: int
    text: str
    reply_to: int | None
    buttons: list[dict]
    photo: bytes | None
    received: float = field(default_factory=time.time)


class BotAPIServer:
    """An aiohttp server in a background thread (its own event loop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.messages: list[SentMessage] = []
        self.answers: list[dict] = []
        self.requests = 0
        self._failures: list[tuple[int, dict]] = []
        self._updates: list[dict] = []
        self._next_update = 1
        self._next_message = 1
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_update: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- control from the test --------------------------------------------------------------

    def start(self) -> BotAPIServer:
        self._thread = threading.Thread(target=self._run, name="botapi", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the local Bot API server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def fail_next(self, count: int, status: int = 500, retry_after: int | None = None) -> None:
        """Answer the next ``count`` send requests with an error (429 with retry_after)."""
        body: dict = {"ok": False, "error_code": status, "description": f"injected {status}"}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        with self._lock:
            self._failures.extend([(status, body)] * count)

    def press(self, message: SentMessage, button: int, user_id: int = 42,
              username: str = "oncall", chat_id: int | None = None) -> None:
        """Simulate a user pressing inline button number ``button`` under ``message``."""
        data = message.buttons[button]["callback_data"]
        chat = message.chat_id if chat_id is None else chat_id
        update = {
            "callback_query": {
                "id": f"cb{self._next_update}",
                "from": {"id": user_id, "is_bot": False, "first_name": username,
                         "username": username},
                "chat_instance": "1",
                "data": data,
                "message": {"message_id": message.message_id, "date": int(time.time()),
                            "chat": {"id": chat, "type": "private"}},
            }
        }
        with self._lock:
            update["update_id"] = self._next_update
            self._next_update += 1
            self._updates.append(update)
        if self._loop is not None and self._new_update is not None:
            self._loop.call_soon_threadsafe(self._new_update.set)

    def sent(self) -> list[SentMessage]:
        with self._lock:
            return list(self.messages)

    # --- the server -------------------------------------------------------------------------

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._new_update = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        form: dict = {}
        photo = None
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.filename:
                    photo = await part.read()
                else:
                    form[part.name] = await part.text()
        elif request.content_type == "application/json":
            form = await request.json()
        else:
            form = dict(await request.post())
        with self._lock:
            self.requests += 1
        if method == "getUpdates":
            return await self._get_updates(form)
        if method == "getMe":  # aiogram's dispatcher asks who it is before polling
            bot_id = int(request.match_info["token"].split(":", 1)[0] or 0)
            return web.json_response({"ok": True, "result": {
                "id": bot_id, "is_bot": True, "first_name": "vigil", "username": "vigil_bot",
            }})
        if method == "answerCallbackQuery":
            with self._lock:
                self.answers.append(dict(form))
            return web.json_response({"ok": True, "result": True})
        if method not in ("sendMessage", "sendPhoto"):
            return web.json_response(
                {"ok": False, "error_code": 404, "description": "Not Found: method not found"},
                status=404,
            )
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return web.json_response(failure[1], status=failure[0])
        return self._send(method, form, photo)

    def _send(self, method: str, form: dict, photo: bytes | None) -> web.Response:
        chat_id = int(form["chat_id"])
        reply = form.get("reply_parameters")
        reply_to = None
        if reply:
            reply_to = int((json.loads(reply) if isinstance(reply, str) else reply)["message_id"])
        markup = form.get("reply_markup")
        buttons: list[dict] = []
        if markup:
            markup = json.loads(markup) if isinstance(markup, str) else markup
            buttons = [b for row in markup.get("inline_keyboard", []) for b in row]
        with self._lock:
            message_id = self._next_message
            self._next_message += 1
            self.messages.append(SentMessage(
                method=method, chat_id=chat_id, message_id=message_id,
                text=form.get("text") or form.get("caption") or "", reply_to=reply_to,
                buttons=buttons, photo=photo,
            ))
        result = {"message_id": message_id, "date": int(time.time()),
                  "chat": {"id": chat_id, "type": "private"}}
        return web.json_response({"ok": True, "result": result})

    async def _get_updates(self, form: dict) -> web.Response:
        offset = int(form.get("offset") or 0)
        deadline = time.monotonic() + float(form.get("timeout") or 0)
        assert self._new_update is not None
        while True:
            with self._lock:
                # Telegram forgets updates below the offset a client confirms.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                pending = list(self._updates)
            remaining = deadline - time.monotonic()
            if pending or remaining <= 0:
                return web.json_response({"ok": True, "result": pending})
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), remaining)
            except asyncio.TimeoutError:
                pass
