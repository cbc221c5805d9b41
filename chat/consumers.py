"""`/ws/chat/` — the chat protocol of DESIGN.md §3. The consumer is protocol only: it validates frames,
hands the prompt to the process-wide engine (never generating on the event loop), relays its events
as frames and persists the exchange through chat.services. The rate limit, the one-stream-per-user rule and
the detached-stream registry live in chat.streams (Redis: shared by every server process).

Closing the socket cancels the running generation before its next token. One extension frame,
`{"type": "detach"}`, sent by the chat page when it is being unloaded (e.g. a refresh), asks the server
to keep generating after the close for as long as someone polls the message (the reloaded page does,
via the message view): the reply keeps filling in the database and completes. Without polls for
CHAT_DETACH_GRACE_S seconds (the tab was really closed) the generation is cancelled."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import metrics, selectors, services, streams
from chat.engine_client import get_backend
from slm.engine import AlreadyStreaming, EngineBusy, ModelUnavailable
from slm.generation import GenerationParams, ParamError, PromptTooLong, resolve_seed, validate_params

log = logging.getLogger(__name__)

PROGRESS_SAVE_S = 0.5  # how often the partial reply is written (a refresh mid-reply shows it)
DISCONNECT_WAIT_S = 10.0
ALREADY_STREAMING = "you already have a reply streaming; stop it or wait for it to finish"
MAX_FRAME_DEPTH = 8  # a generate frame nests 3 levels (frame, params, stop list)

_background: set[asyncio.Task[None]] = set()


async def _blocking(func: Callable[..., Any], *args: Any) -> Any:
    """Runs a blocking call (Redis) in a worker thread, off the event loop."""
    return await sync_to_async(func, thread_sensitive=False)(*args)


def _too_deep(value: Any, limit: int) -> bool:
    """True when JSON `value` nests lists/objects deeper than `limit` (iterative: no recursion to overflow)."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


class _Stream:
    def __init__(
        self,
        request_id: str,
        message_id: int,
        backend: Any,
        events: asyncio.Queue[tuple[str, dict[str, Any]]],
        claim: str,
    ) -> None:
        self.request_id = request_id
        self.message_id = message_id
        self.backend = backend
        self.events = events
        self.claim = claim  # chat.streams token of the user's one live stream
        self.task: asyncio.Task[None] | None = None
        self.cancel_how: str | None = None
        self.released = False  # the claim is given back just before the final frame goes out

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done() and not self.released

    async def release(self, user_id: int) -> None:
        """Gives the user's stream claim back (once): the next generate may start on any process."""
        if self.released:
            return
        self.released = True
        try:
            await _blocking(streams.release_stream, user_id, self.claim)
        except redis.RedisError:
            log.warning("chat: could not release the stream claim of user %s (it expires)", user_id)


class ChatConsumer(AsyncWebsocketConsumer):
    # Tokens come straight from the in-process engine handle, never through the channel layer: an alias
    # that names no layer means no per-socket Redis channel (nothing to time out or leak).
    channel_layer_alias = "chat-no-layer"

    async def connect(self) -> None:
        self.stream: _Stream | None = None
        self.open = False
        self.detach_requested = False
        user = self.scope.get("user")
        await self.accept()
        self.open = True
        if user is None or not user.is_authenticated:
            await self.send_error("not_authenticated", "log in to chat (no valid session)")
            await self.close(code=4401)
            self.open = False
            return
        self.user = user

    async def disconnect(self, code: int) -> None:
        self.open = False
        stream = self.stream
        if stream is not None and stream.running:
            grace = float(settings.CHAT_DETACH_GRACE_S)
            if self.detach_requested and grace > 0:
                try:
                    await _blocking(streams.detach, stream.message_id, grace)
                except redis.RedisError:
                    log.exception("chat: could not detach stream %s; cancelling it", stream.message_id)
                    self._cancel(stream, "disconnect")
                    return
                task = asyncio.create_task(self._watch_detached(stream))
                _background.add(task)
                task.add_done_callback(_background.discard)
                return
            self._cancel(stream, "disconnect")
            try:
                await asyncio.wait_for(asyncio.shield(stream.task), DISCONNECT_WAIT_S)
            except (TimeoutError, asyncio.CancelledError):
                pass

    async def _watch_detached(self, stream: _Stream) -> None:
        """Lets a detached stream run while its message is polled; cancels it once polls stop."""
        assert stream.task is not None
        try:
            while not stream.task.done():
                try:
                    remaining = await _blocking(streams.detached_remaining, stream.message_id)
                except redis.RedisError:
                    remaining = 0.0
                if remaining <= 0:
                    self._cancel(stream, "disconnect")
                    await asyncio.wait_for(asyncio.shield(stream.task), DISCONNECT_WAIT_S)
                    return
                try:
                    await asyncio.wait_for(asyncio.shield(stream.task), min(remaining, 0.25))
                except TimeoutError:
                    continue
        except (TimeoutError, asyncio.CancelledError):
            pass
        finally:
            try:
                await _blocking(streams.forget_detached, stream.message_id)
            except redis.RedisError:
                pass  # the key expires by itself

    # ------------------------------------------------------------------------------ frames out
    async def send_json(self, payload: dict[str, Any]) -> None:
        if self.open:
            try:
                await self.send(text_data=json.dumps(payload, ensure_ascii=False))
            except Exception:  # the socket went away under us
                self.open = False

    async def send_error(self, code: str, message: str) -> None:
        metrics.ERRORS.labels(code=code).inc()
        await self.send_json({"type": "error", "code": code, "message": message})

    # ------------------------------------------------------------------------------- frames in
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not getattr(self, "user", None):
            await self.send_error("not_authenticated", "log in to chat")
            return
        if text_data is None:
            await self.send_error("bad_json", "frames must be JSON text")
            return
        limit = settings.CHAT_MAX_FRAME_CHARS
        if len(text_data) > limit:
            log.warning("chat: user %s sent a frame of %d characters (limit %d)", self.user.pk, len(text_data), limit)
            await self.send_error("frame_too_large", f"a frame has at most {limit} characters")
            return
        try:
            frame = json.loads(text_data)
            if _too_deep(frame, MAX_FRAME_DEPTH):
                raise RecursionError
            json.dumps(frame, ensure_ascii=False).encode("utf-8")  # "\ud800" escapes: no valid text
        except RecursionError:
            log.warning("chat: user %s sent a frame nested deeper than %d levels", self.user.pk, MAX_FRAME_DEPTH)
            await self.send_error("bad_json", f"the frame is nested deeper than {MAX_FRAME_DEPTH} levels")
            return
        except ValueError:  # UnicodeEncodeError included
            await self.send_error("bad_json", "the frame is not valid JSON (or holds a lone surrogate escape)")
            return
        if not isinstance(frame, dict):
            await self.send_error("bad_json", "a frame must be a JSON object with a 'type'")
            return
        kind = frame.get("type")
        if kind == "generate":
            try:
                await self.generate(frame)
            except redis.RedisError:
                log.exception("chat: Redis unreachable")
                await self.send_error("server_error", "the server cannot reach its Redis; try again shortly")
            except Exception:  # a bug below must cost one error frame, not the socket (close 1011)
                log.exception("chat: generate failed")
                await self.send_error("server_error", "the reply could not be started; try again")
        elif kind == "detach":
            self.detach_requested = self.stream is not None and self.stream.running
        elif kind == "stop":
            if self.stream is not None and self.stream.running:
                self._cancel(self.stream, "stop")
        else:
            await self.send_error("unknown_type", f"unknown frame type {kind!r} (use 'generate' or 'stop')")

    def _cancel(self, stream: _Stream, how: str) -> None:
        if stream.cancel_how is None:
            stream.cancel_how = how
            stream.backend.cancel(stream.request_id)

    async def generate(self, frame: dict[str, Any]) -> None:
        if self.stream is not None and self.stream.running:
            await self.send_error("already_streaming", "a reply is still streaming on this connection; stop it first")
            return
        prompt = frame.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            await self.send_error("missing_prompt", "'prompt' must be a non-empty string")
            return
        if len(prompt) > settings.CHAT_MAX_PROMPT_CHARS:
            limit = settings.CHAT_MAX_PROMPT_CHARS
            await self.send_error(
                "prompt_too_long",
                f"Your message is too long: it has {len(prompt):,} characters and at most {limit:,} are allowed. "
                f"Shorten it by {len(prompt) - limit:,} characters.",
            )
            return
        try:
            params = validate_params(frame.get("params"), settings.CHAT_DEFAULT_PARAMS, settings.CHAT_LIMITS)
        except ParamError as exc:
            await self.send_error("bad_params", str(exc))
            return
        requested = frame.get("model")
        if requested is not None and (not isinstance(requested, str) or not requested.strip()):
            await self.send_error("unknown_model", "'model' must be the name of a chat model the server offers")
            return
        if await _blocking(streams.rate_limited, self.user.pk, settings.CHAT_RATE_LIMIT_PER_MIN):
            await self.send_error(
                "rate_limited", f"at most {settings.CHAT_RATE_LIMIT_PER_MIN} messages a minute; wait a little"
            )
            return
        conversation = None
        if frame.get("conversation") is not None:
            conversation = await database_sync_to_async(selectors.conversation_get)(
                user=self.user, conversation_id=frame.get("conversation")
            )
            if conversation is None:
                await self.send_error("not_found", "no such conversation")
                return
        history = (
            await database_sync_to_async(selectors.conversation_history)(conversation=conversation)
            if conversation is not None
            else []
        )
        entry = await database_sync_to_async(self._pick_model)(conversation, requested)
        if isinstance(entry, str):
            await self.send_error("unknown_model", entry)
            return
        params = resolve_seed(params)
        try:
            backend = await sync_to_async(get_backend, thread_sensitive=False)(entry)
            model_ref, chat_prompt = await sync_to_async(backend.prepare, thread_sensitive=False)(
                history, prompt, params
            )
        except PromptTooLong as exc:
            await self.send_error("prompt_too_long", str(exc))
            return
        except ModelUnavailable as exc:
            state = await sync_to_async(selectors.model_building, thread_sensitive=False)(entry)
            if state is not None and state["state"] in ("waiting", "running"):
                message = f"the chat model is still being built ({state['percent']}%); try again in a few minutes"
            else:
                message = str(exc)
            await self.send_error("model_unavailable", message)
            return
        await self._start(backend, conversation, prompt, params, model_ref, chat_prompt, entry.name)

    @staticmethod
    def _pick_model(conversation: Any, requested: str | None) -> selectors.ChatModelEntry | str:
        """The chat model for this message: the one the frame names (it must be offered), else the
        conversation's, else the default; a string says why there is none."""
        offered = selectors.chat_models_offered()
        if requested is not None:
            entry = selectors.chat_model_get(requested.strip(), offered)
            if entry is None:
                names = ", ".join(e.name for e in offered) or "none"
                return f"no chat model named {requested.strip()[:64]!r} is offered here (offered: {names})"
            return entry
        return selectors.chat_model_for(conversation, offered) or "no chat model is offered here; ask an admin"

    async def _start(
        self,
        backend: Any,
        conversation: Any,
        prompt: str,
        params: GenerationParams,
        model_ref: str,
        chat_prompt: Any,
        model_name: str = "",
    ) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

        def on_event(kind: str, data: dict[str, Any]) -> None:  # engine thread -> event loop
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))

        claim = await _blocking(streams.claim_stream, self.user.pk)
        if claim is None:  # a stream of this user runs on this or another server process
            await self.send_error("already_streaming", ALREADY_STREAMING)
            return
        try:
            request_id, position = await sync_to_async(backend.submit, thread_sensitive=False)(
                chat_prompt, params, on_event, user_key=str(self.user.pk), model_ref=model_ref
            )
        except (EngineBusy, AlreadyStreaming, ModelUnavailable) as exc:
            await _blocking(streams.release_stream, self.user.pk, claim)
            await self.send_error(exc.code, str(exc))
            return
        except Exception:  # whatever else went wrong, the claim must not block the user's next message
            await _blocking(streams.release_stream, self.user.pk, claim)
            raise
        try:
            conversation, _, agent = await database_sync_to_async(services.exchange_start)(
                owner=self.user,
                conversation=conversation,
                prompt=prompt,
                params=params.to_dict(),
                seed=params.seed,
                model_ref=model_ref,
                model_name=model_name,
                queued=position > 0,
            )
        except Exception:  # e.g. the database went away: the socket stays usable
            log.exception("chat: could not save the exchange")
            backend.cancel(request_id)
            await _blocking(streams.release_stream, self.user.pk, claim)
            await self.send_error("server_error", "the message could not be saved; try again")
            return
        stream = _Stream(request_id, agent.pk, backend, events, claim)
        self.stream = stream
        self.detach_requested = False
        metrics.STREAMS.inc()
        metrics.ACTIVE.inc()
        metrics.QUEUE_DEPTH.set(backend.stats()["queued"])
        await self.send_json(
            {
                "type": "start",
                "conversation": conversation.pk,
                "message": agent.pk,
                "model": model_ref,
                "queue_position": position,
            }
        )
        stream.task = asyncio.create_task(self._pump(stream, model_ref))

    async def _pump(self, stream: _Stream, model_ref: str) -> None:
        text = ""
        last_save = last_claim = time.monotonic()
        refresh_s = settings.CHAT_STREAM_CLAIM_TTL_S / 3
        mid = stream.message_id
        # The partial reply is written in the background (one write in flight at most), never between two
        # tokens: a slow database does not delay the stream. It is awaited before the final write.
        saving: asyncio.Task[None] | None = None
        try:
            while True:
                if time.monotonic() - last_claim >= refresh_s:  # a long queue wait or reply keeps its claim
                    last_claim = time.monotonic()
                    await _blocking(streams.refresh_stream, self.user.pk, stream.claim)
                try:
                    kind, data = await asyncio.wait_for(stream.events.get(), refresh_s)
                except TimeoutError:
                    continue
                if kind == "started":
                    model_ref = data.get("model") or model_ref
                    await database_sync_to_async(services.message_progress)(
                        message_id=mid, text=text, model_ref=model_ref
                    )
                elif kind == "token":
                    text += data["text"]
                    await self.send_json({"type": "token", "message": mid, "text": data["text"]})
                    if saving is not None and saving.done():
                        saving, done = None, saving
                        done.result()  # a failed write ends the stream (below), as an inline one did
                    if saving is None and time.monotonic() - last_save >= PROGRESS_SAVE_S:
                        last_save = time.monotonic()
                        saving = asyncio.create_task(
                            database_sync_to_async(services.message_progress)(message_id=mid, text=text)
                        )
                elif kind == "end":
                    if saving is not None:
                        saving, pending = None, saving
                        await pending
                    await self._finish(stream, data)
                    return
                elif kind == "error":
                    if saving is not None:
                        saving, pending = None, saving
                        await asyncio.gather(pending, return_exceptions=True)
                    await database_sync_to_async(services.message_finish)(
                        message_id=mid, text=text, reason="error", error=True
                    )
                    await stream.release(self.user.pk)
                    await self.send_error(
                        data.get("code", "model_unavailable"), data.get("message", "generation failed")
                    )
                    return
        except Exception:  # e.g. the database went away: stop generating and tell the client
            log.exception("chat stream %s failed", mid)
            self._cancel(stream, "error")
            await stream.release(self.user.pk)
            await self.send_error("server_error", "the reply could not be saved; try again")
        finally:
            if saving is not None:  # let the last partial write land (or fail) before the stream goes
                await asyncio.gather(saving, return_exceptions=True)
            metrics.ACTIVE.dec()
            metrics.QUEUE_DEPTH.set(stream.backend.stats()["queued"])
            await stream.release(self.user.pk)

    async def _finish(self, stream: _Stream, data: dict[str, Any]) -> None:
        reason = data["reason"]
        usage = data.get("usage") or {}
        timing = data.get("timing") or {}
        ttft, tps = timing.get("ttft_ms"), timing.get("tokens_per_s")
        await database_sync_to_async(services.message_finish)(
            message_id=stream.message_id,
            text=data["text"],
            reason=reason,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            ttft_ms=ttft,
            tokens_per_s=tps,
            model_ref=data.get("model") or None,
        )
        metrics.STREAMS_FINISHED.labels(reason=reason).inc()
        metrics.COMPLETION_TOKENS.inc(int(usage.get("completion_tokens") or 0))
        if reason == "cancelled":
            metrics.CANCELLATIONS.labels(how=stream.cancel_how or "stop").inc()
        if ttft is not None:
            metrics.TTFT.observe(ttft / 1000)
        if tps:
            metrics.TOKENS_PER_S.observe(tps)
        await stream.release(self.user.pk)
        await self.send_json(
            {
                "type": "end",
                "message": stream.message_id,
                "reason": reason,
                "text": data["text"],
                "usage": {
                    "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                    "completion_tokens": int(usage.get("completion_tokens") or 0),
                },
                "timing": {
                    "ttft_ms": round(ttft, 2) if ttft is not None else None,
                    "tokens_per_s": round(tps, 2) if tps else None,
                },
            }
        )
