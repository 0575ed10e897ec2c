"""The Telegram channel (aiogram): alerts as photos with buttons, resolves as replies, and the
button presses read back by aiogram's dispatcher (long polling ``getUpdates``).

Every firing message carries three inline buttons — **Acknowledge**, **Mute 1 h**, **Not an
anomaly** — whose callback data is ``<action>:<notification id>``. :meth:`TelegramBot.presses`
yields them (from allowed chats only; others get a refusal) for the notifier to turn into
feedback records and silences. ``api_url`` points aiogram at another Bot API server, such as
:mod:`vigil.devtools.botapi` in tests — the client code is the same as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    ReplyParameters,
)
from aiogram.utils.backoff import Backoff, BackoffConfig

from vigil.sinks.alerts import Notification, TelegramReceiver, TelegramSettings

__all__ = [
    "ACTIONS",
    "ButtonPress",
    "TelegramBot",
    "TelegramChannel",
    "is_permanent_telegram_error",
    "is_transient_telegram_error",
]

log = logging.getLogger(__name__)

CAPTION_LIMIT = 1024  # Telegram's limit for photo captions
TEXT_LIMIT = 4096
#: Waits between failed ``getMe``/``getUpdates`` calls: 1 s growing to 5 s (aiogram's default).
BACKOFF = BackoffConfig(min_delay=1.0, max_delay=5.0, factor=1.3, jitter=0.1)

#: callback action → (button text, feedback action name)
ACTIONS = {
    "ack": ("✅ Acknowledge", "acknowledge"),
    "mute": ("🔕 Mute 1 h", "mute"),
    "fp": ("🙅 Not an anomaly", "not_anomaly"),
}


def is_permanent_telegram_error(exc: BaseException) -> bool:
    """Errors another attempt cannot fix: a bad request, an unknown chat, a wrong token."""
    return isinstance(
        exc,
        TelegramBadRequest | TelegramForbiddenError | TelegramNotFound | TelegramUnauthorizedError
        | TelegramEntityTooLarge,
    )


def is_transient_telegram_error(exc: BaseException) -> bool:
    """Failures that waiting may cure: the Bot API unreachable or answering 5xx, a flood
    limit (``retry_after``), a timeout."""
    if is_permanent_telegram_error(exc):
        return False
    return isinstance(exc, TelegramNetworkError | TelegramServerError | TelegramRetryAfter
                      | OSError)


@dataclass(frozen=True)
class ButtonPress:
    """One press of an alert's inline button."""

    callback_id: str
    action: str  # acknowledge | mute | not_anomaly
    notification_id: str
    user_id: int
    user_name: str
    chat_id: int
    message_id: int | None


class TelegramBot:
    """One bot for all receivers: sends messages and reads button presses."""

    def __init__(self, settings: TelegramSettings, allowed_chats: Collection[int]) -> None:
        if settings.token is None:
            raise ValueError("a Telegram receiver needs alerts.telegram.token "
                             "(VIGIL_ALERTS__TELEGRAM__TOKEN)")
        session = None
        if settings.api_url:
            session = AiohttpSession(api=TelegramAPIServer.from_base(settings.api_url))
        self.bot = Bot(settings.token.get_secret_value(), session=session)
        self.settings = settings
        self.allowed_chats = set(allowed_chats)
        self.allowed_users = set(settings.allowed_user_ids)
        if settings.poll_updates and not self.allowed_users:
            log.warning("no alerts.telegram.allowed_user_ids: every button press is refused")

    async def close(self) -> None:
        await self.bot.session.close()

    @staticmethod
    def keyboard(notification_id: str) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup(
            inline_keyboard=[[
                InlineKeyboardButton(text=text, callback_data=f"{code}:{notification_id}")
                for code, (text, _) in ACTIONS.items()
            ]]
        )

    async def presses(self) -> AsyncIterator[ButtonPress]:
        """Button presses, forever: aiogram's dispatcher long-polls ``getUpdates`` (with its
        own backoff through outages) and hands each callback query over here. Presses from
        chats not on the allow-list are refused and not yielded.

        One press at a time: the dispatcher confirms an update (the next ``getUpdates``
        offset) and reads the next one only after the consumer has handled this one.
        """
        loop = asyncio.get_running_loop()
        handoff: asyncio.Queue[tuple[ButtonPress, asyncio.Future[None]]] = asyncio.Queue(1)
        router = Router(name="vigil-buttons")

        @router.callback_query()
        async def on_press(query: CallbackQuery) -> None:
            press = await self._press(query)
            if press is not None:
                handled: asyncio.Future[None] = loop.create_future()
                await handoff.put((press, handled))
                await handled

        dispatcher = Dispatcher()
        dispatcher.include_router(router)
        await self._wait_for_api()
        polling = asyncio.create_task(dispatcher.start_polling(
            self.bot,
            polling_timeout=self.settings.poll_timeout_s,
            handle_as_tasks=False,
            backoff_config=BACKOFF,
            allowed_updates=["callback_query"],
            handle_signals=False,
            close_bot_session=False,  # the bot also sends alerts; close() closes it
        ), name="telegram-polling")
        taking: asyncio.Future | None = None
        try:
            while True:
                taking = asyncio.ensure_future(handoff.get())
                await asyncio.wait({taking, polling}, return_when=asyncio.FIRST_COMPLETED)
                if not taking.done():
                    taking.cancel()
                    polling.result()  # polling never ends by itself: raise what stopped it
                    return
                press, handled = taking.result()
                try:
                    yield press
                finally:
                    if not handled.done():
                        handled.set_result(None)
        finally:
            if taking is not None:
                taking.cancel()
            await self._stop(dispatcher, polling)

    async def _wait_for_api(self) -> None:
        """``getMe`` until it answers (the dispatcher asks once and gives up otherwise)."""
        backoff = Backoff(BACKOFF)
        while True:
            try:
                await self.bot.me()
                return
            except Exception as exc:  # noqa: BLE001 - wait through outages, as polling does
                log.warning("Telegram getMe failed (%s); retrying in %.1f s",
                            exc, backoff.next_delay)
                await backoff.asleep()

    @staticmethod
    async def _stop(dispatcher: Dispatcher, polling: asyncio.Task) -> None:
        if polling.done():
            return
        try:
            # Cancels the dispatcher's polling task; cancelling start_polling would not.
            await dispatcher.stop_polling()
        except RuntimeError:  # the task has not started yet
            polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling

    async def _press(self, query) -> ButtonPress | None:
        if query is None:
            return None
        chat_id = query.message.chat.id if query.message else None
        code, _, notification_id = (query.data or "").partition(":")
        if chat_id not in self.allowed_chats:
            log.warning("refused a button press from chat %s (not on the allow-list)", chat_id)
            await self.answer(query.id, "This chat may not act on vigil alerts.")
            return None
        user_id = query.from_user.id if query.from_user else None
        if user_id not in self.allowed_users:
            log.warning("refused a button press from user %s in chat %s (not on "
                        "alerts.telegram.allowed_user_ids)", user_id, chat_id)
            await self.answer(query.id, "You may not act on vigil alerts.")
            return None
        if code not in ACTIONS or not notification_id:
            await self.answer(query.id, "Unknown button.")
            return None
        user = query.from_user
        return ButtonPress(
            callback_id=query.id,
            action=ACTIONS[code][1],
            notification_id=notification_id,
            user_id=user.id,
            user_name=user.username or user.full_name,
            chat_id=chat_id,
            message_id=query.message.message_id if query.message else None,
        )

    async def answer(self, callback_id: str, text: str) -> None:
        try:
            await self.bot.answer_callback_query(callback_id, text=text)
        except Exception as exc:  # noqa: BLE001 - the answer is a courtesy; the press counts
            log.warning("answerCallbackQuery failed: %s", exc)


class TelegramChannel:
    """Delivers notifications to the chats of one receiver."""

    name = "telegram"

    def __init__(
        self, bot: TelegramBot, receiver: TelegramReceiver, dashboard_url: str | None = None
    ) -> None:
        self.bot = bot
        self.receiver = receiver
        self.dashboard_url = dashboard_url

    async def send(
        self,
        notification: Notification,
        chart_png: bytes | None,
        previous: dict | None,
        progress: dict | None = None,
    ) -> dict:
        """Send to every chat not yet in ``progress`` (a retry skips chats already served).

        Firing messages are a photo with the facts as caption and the buttons; follow-ups
        (resolves, escalations) reply to the chat's earlier message. Returns
        ``{"messages": {chat id: message id}}``.
        """
        progress = {} if progress is None else progress
        sent: dict[str, int] = progress.setdefault("messages", {})
        earlier = (previous or {}).get("messages", {})
        for chat in self.receiver.chat_ids:
            if str(chat) in sent:
                continue
            reply = None
            if str(chat) in earlier:
                reply = ReplyParameters(
                    message_id=int(earlier[str(chat)]), allow_sending_without_reply=True
                )
            buttons = self.bot.keyboard(notification.id) if notification.kind == "firing" else None
            if chart_png is not None:
                message = await self.bot.bot.send_photo(
                    chat,
                    BufferedInputFile(chart_png, filename="chart.png"),
                    caption=notification.text(self.dashboard_url, limit=CAPTION_LIMIT),
                    parse_mode=None,
                    reply_parameters=reply,
                    reply_markup=buttons,
                )
            else:
                message = await self.bot.bot.send_message(
                    chat,
                    notification.text(self.dashboard_url, limit=TEXT_LIMIT),
                    parse_mode=None,
                    reply_parameters=reply,
                    reply_markup=buttons,
                )
            sent[str(chat)] = message.message_id
        # Follow-ups keep replying to the first message of the thread.
        return {"messages": {**sent, **earlier}}
