"""Text generation pieces shared by the serving engine and the remote backend (no Django here).

* `GenerationParams` + `validate_params`: per-request sampling settings, checked against limits.
* `LogitsSampler`: repetition penalty, temperature, top-k, top-p and greedy/seeded sampling for one
  request (a per-request `torch.Generator`, so a seed reproduces a reply whatever else is running).
  The order and formulas follow `transformers`' logits processors, so greedy decoding picks exactly
  the tokens `model.generate(do_sample=False, repetition_penalty=...)` picks.
* `IncrementalDecoder`: turns token ids into text deltas that never split a multi-byte character and
  holds back text that could be the start of a stop string; the deltas concatenate exactly to the
  final text.
  `make_decode` / `make_detokenizer` / `encode_prompt` handle both tokenizer kinds served here:
  byte-level BPE (GPT-2) and WordPiece (BertTokenizer, as uer/gpt2-chinese-cluecorpussmall uses), whose
  Chinese is streamed without spaces between characters.
* `format_chat_prompt`: the "User: …\\nAgent:" dialogue prompt, dropping the oldest turns to fit.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from slm import cpu_int8

PARAM_NAMES = (
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "do_sample",
    "seed",
    "stop",
)
MAX_SEED = 2**63 - 1
REPLACEMENT_CHAR = "\ufffd"


class ParamError(ValueError):
    """A generation parameter is unknown, of the wrong type or out of range (message says which)."""


class PromptTooLong(ValueError):
    """Even the newest turn alone does not fit the model's context window. The message says so in words
    (how much too long, what to do); the numbers are kept for clients that want to show their own."""

    def __init__(self, message: str, *, tokens: int = 0, limit: int = 0, excess_chars: int = 0) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit
        self.excess_chars = excess_chars


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    do_sample: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0.0


DEFAULT_LIMITS: dict[str, Any] = {
    "max_new_tokens": (1, 512),
    "temperature": (0.0, 5.0),
    "top_k": (0, 1000),
    "top_p": (0.0, 1.0),
    "repetition_penalty": (0.5, 3.0),
    "stop_strings": 8,
    "stop_chars": 64,
}


def _number(name: str, value: Any, kind: type, lo: float, hi: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParamError(f"{name} must be a number")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ParamError(f"{name} must be a whole number")
        value = int(value)
    else:
        value = float(value)
        if value != value:  # NaN
            raise ParamError(f"{name} must be a number")
    if not lo <= value <= hi:
        raise ParamError(f"{name} must be between {lo} and {hi} (got {value})")
    return value


def validate_params(
    raw: Any, defaults: Mapping[str, Any] | None = None, limits: Mapping[str, Any] | None = None
) -> GenerationParams:
    """Merges `raw` (client params, may be None) over `defaults` and checks each value against `limits`.

    Unknown names, wrong types and out-of-range values raise ParamError with a human message. A null
    value means "the default" (for `seed`: a fresh random seed unless the defaults fix one).
    """
    lim = {**DEFAULT_LIMITS, **(limits or {})}
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ParamError("params must be an object")
    unknown = sorted(set(raw) - set(PARAM_NAMES))
    if unknown:
        raise ParamError(f"unknown parameter(s): {', '.join(map(str, unknown))} (allowed: {', '.join(PARAM_NAMES)})")
    merged = {**(defaults or {}), **{k: v for k, v in raw.items() if v is not None}}
    out: dict[str, Any] = {}
    for name, kind in (
        ("max_new_tokens", int),
        ("temperature", float),
        ("top_k", int),
        ("top_p", float),
        ("repetition_penalty", float),
    ):
        if name in merged and merged[name] is not None:
            lo, hi = lim[name]
            out[name] = _number(name, merged[name], kind, lo, hi)
    if "repetition_penalty" in out and out["repetition_penalty"] <= 0:
        raise ParamError("repetition_penalty must be positive")
    do_sample = merged.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise ParamError("do_sample must be true or false")
    out["do_sample"] = do_sample
    seed = merged.get("seed")
    if seed is not None:
        out["seed"] = _number("seed", seed, int, 0, MAX_SEED)
    stop = merged.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise ParamError("stop must be a list of strings")
    if len(stop) > lim["stop_strings"]:
        raise ParamError(f"at most {lim['stop_strings']} stop strings")
    if any(len(s) > lim["stop_chars"] for s in stop):
        raise ParamError(f"stop strings must be at most {lim['stop_chars']} characters")
    out["stop"] = tuple(s for s in stop if s)
    return GenerationParams(**out)


def resolve_seed(params: GenerationParams) -> GenerationParams:
    """Fills in a random seed for a sampled request without one, so the reply can be reproduced."""
    if params.greedy or params.seed is not None:
        return params
    return GenerationParams(**{**params.to_dict(), "stop": params.stop, "seed": random.SystemRandom().randrange(2**31)})


# ----------------------------------------------------------------------------------------- sampling
class LogitsSampler:
    """Picks the next token for one request from its last-position logits (1-D, vocab)."""

    def __init__(self, params: GenerationParams, device: torch.device | str = "cpu") -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(int(params.seed if params.seed is not None else 0))

    def process(self, logits: torch.Tensor, seen_ids: torch.Tensor) -> torch.Tensor:
        """Applies repetition penalty and the sampling warpers (transformers' order and formulas)."""
        p = self.params
        scores = logits.float()
        if p.repetition_penalty != 1.0 and seen_ids.numel():
            score = torch.gather(scores, 0, seen_ids)
            score = torch.where(score < 0, score * p.repetition_penalty, score / p.repetition_penalty)
            scores = scores.scatter(0, seen_ids, score)
        if p.greedy:
            return scores
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if p.top_k and p.top_k > 0:
            k = min(p.top_k, scores.shape[-1])
            kth = torch.topk(scores, k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(scores, descending=False)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - p.top_p)
            remove[-1:] = False  # keep at least one
            scores = scores.masked_fill(remove.scatter(0, sorted_idx, remove), float("-inf"))
        return scores

    def next_token(self, logits: torch.Tensor, seen_ids: torch.Tensor) -> int:
        scores = self.process(logits, seen_ids)
        if self.params.greedy:
            return cpu_int8.argmax(scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


# ------------------------------------------------------------------------------------ detokenizing
def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class IncrementalDecoder:
    """Streams text for generated token ids.

    `push(token_id)` returns the new text that is safe to show (possibly ""): bytes of a character
    that is not complete yet are held back (byte-level BPE splits CJK and emoji across tokens), and so
    is any tail that could start a stop string. When a stop string appears, `stopped` becomes True and
    the text is cut before it. `finish()` returns the remaining text. The concatenation of all returned
    deltas equals `text`.
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self._decode = decode
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self._prefix = 0  # ids[_prefix:_read] decode to the text already taken into `_text`
        self._read = 0
        self._text = ""  # decoded, complete text (may include held-back stop-prefix tail)
        self._emitted = 0  # chars of _text already returned
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text[: self._emitted] if self.stopped else self._text

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""  # an incomplete multi-byte character: wait for the next token
        self._text += new_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        if self.stops:
            window_start = max(0, self._emitted - max(len(s) for s in self.stops))
            hits = [i for s in self.stops if (i := self._text.find(s, window_start)) >= 0]
            if hits:
                cut = min(hits)
                self.stopped = True
                self._text = self._text[:cut]
                delta = self._text[self._emitted :]
                self._emitted = len(self._text)
                return delta
        safe = len(self._text) if final else len(self._text) - _held_back(self._text, self.stops)
        if safe <= self._emitted:
            return ""
        delta = self._text[self._emitted : safe]
        self._emitted = safe
        return delta

    def finish(self) -> str:
        """Flushes everything left (an incomplete trailing character decodes as U+FFFD)."""
        if not self.stopped and self._read < len(self.ids):
            prefix_text = self._decode(self.ids[self._prefix : self._read])
            new_text = self._decode(self.ids[self._prefix :])
            self._text += new_text[len(prefix_text) :]
            self._prefix = self._read = len(self.ids)
        if self.stopped:
            return ""
        delta = self._release(final=True)
        if self.stopped:
            return delta
        rest = self._text[self._emitted :]
        self._emitted = len(self._text)
        return delta + rest


def is_wordpiece(tokenizer: Any) -> bool:
    """True for BERT-style (WordPiece) tokenizers, e.g. the BertTokenizer of
    uer/gpt2-chinese-cluecorpussmall: tokens carry no spaces, and the tokenizer's own decode joins
    every token with one (Chinese comes out as "你 好")."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return type(backend.model).__name__ == "WordPiece"
    return hasattr(tokenizer, "wordpiece_tokenizer")


def _joins_without_space(ch: str) -> bool:
    """Characters written without spaces around them: CJK ideographs (the ranges BERT splits into
    single tokens), CJK symbols and punctuation, kana, fullwidth forms."""
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2FA1F
        or 0xF900 <= cp <= 0xFAFF
        or 0x3000 <= cp <= 0x30FF
        or 0x31F0 <= cp <= 0x31FF
        or 0xFF00 <= cp <= 0xFFEF
    )


_NO_SPACE_BEFORE = set(".,!?;:%)]}")
_NO_SPACE_AFTER = set("([{")


def _wordpiece_text(tokens: Sequence[str]) -> str:
    """Joins WordPiece tokens: "##" pieces attach to the previous token; other tokens are separated by
    a space unless either neighbour is a CJK character (or closing/opening punctuation). Each decision
    looks only at the two tokens around the gap, so decoding a window of ids gives exactly the slice of
    the whole text: the incremental deltas concatenate to the full decode."""
    out: list[str] = []
    prev = ""
    for tok in tokens:
        if not tok:
            continue
        piece = tok[2:] if tok.startswith("##") and len(tok) > 2 else tok
        if out and not tok.startswith("##"):
            if not (
                _joins_without_space(prev[-1])
                or _joins_without_space(piece[0])
                or piece[0] in _NO_SPACE_BEFORE
                or prev[-1] in _NO_SPACE_AFTER
            ):
                out.append(" ")
        out.append(piece)
        prev = piece
    return "".join(out)


def make_decode(tokenizer: Any) -> Callable[[list[int]], str]:
    """ids -> text, special tokens dropped. Byte-level BPE (GPT-2) goes through `tokenizer.decode`;
    WordPiece tokenizers are joined by `_wordpiece_text` (Chinese without spaces between characters)."""
    if is_wordpiece(tokenizer):

        def decode_wordpiece(ids: list[int]) -> str:
            if not ids:
                return ""
            return _wordpiece_text(tokenizer.convert_ids_to_tokens(list(ids), skip_special_tokens=True))

        return decode_wordpiece

    def decode(ids: list[int]) -> str:
        if not ids:
            return ""
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    return decode


def make_detokenizer(tokenizer: Any, stops: Sequence[str] = ()) -> IncrementalDecoder:
    """The streaming decoder for one reply of a model with this tokenizer. A lower-casing tokenizer
    (bert-base-chinese's vocabulary) can only produce lower-case text, so its stop strings are matched
    in lower case ("User:" stops at "user:")."""
    if getattr(tokenizer, "do_lower_case", False):
        stops = [s.lower() for s in stops]
    return IncrementalDecoder(make_decode(tokenizer), stops)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Prompt ids for generation. Byte-level BPE tokenizers add nothing (GPT-2 has no BOS in prompts);
    a WordPiece tokenizer would wrap the text in [CLS] … [SEP], and a [SEP] at the end of a prompt tells
    the model the text is over: the prompt gets only the leading [CLS] (how uer's GPT-2 saw its
    training documents), never special tokens inside or after it."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if is_wordpiece(tokenizer):
        cls = getattr(tokenizer, "cls_token_id", None)
        if cls is not None:
            ids = [int(cls), *ids]
    return ids


# ---------------------------------------------------------------------------------------- prompting
USER_PREFIX = "User:"
AGENT_PREFIX = "Agent:"


def _turn_line(role: str, text: str) -> str:
    prefix = USER_PREFIX if role == "user" else AGENT_PREFIX
    return f"{prefix} {' '.join(text.split())}"


def _too_long(user_text: str, n: int, limit: int, window: int | None, reserved: int, unit: str) -> PromptTooLong:
    excess = n - limit
    chars = len(user_text) if unit == "characters" else -(-excess * len(user_text) // max(1, n))
    how = f"it is {n:,} {unit} and at most {limit:,} {unit} fit"
    if window:
        how += f" (the model reads {window:,} {unit} at a time and keeps {reserved:,} of them for the reply)"
    fix = f"Shorten it by about {excess:,} {unit}"
    if unit != "characters":
        fix += f" (roughly {min(chars, len(user_text)):,} characters)"
    if reserved - excess >= 1:
        fix += f", or set “Max new tokens” to {reserved - excess:,} or less"
    message = f"Your message is too long for this model: {how}. {fix}."
    return PromptTooLong(message, tokens=n, limit=limit, excess_chars=min(chars, len(user_text)))


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    ids: list[int]
    turns_used: int  # history turns kept (the newest user turn not counted)
    turns_dropped: int
    # the kept turns plus the new user turn as (role, text), role "user" | "agent": what an
    # OpenAI-compatible /v1/chat/completions backend sends as `messages` instead of `text`
    turns: tuple[tuple[str, str], ...] = ()


def format_chat_prompt(
    history: Sequence[tuple[str, str]],
    user_text: str,
    encode: Callable[[str], list[int]],
    max_prompt_tokens: int,
    *,
    window: int | None = None,
    reserved: int = 0,
    unit: str = "tokens",
) -> ChatPrompt:
    """'User: …\\nAgent: …\\nUser: <new>\\nAgent:' with the oldest turns dropped until it fits in
    `max_prompt_tokens` (= context window - max_new_tokens). `history` holds (role, text) pairs,
    role "user" or "agent". Raises PromptTooLong when the newest user turn alone does not fit; `window`
    and `reserved` (the room kept for the reply) only make its message more helpful."""
    kept = [(role, text) for role, text in history if text.strip()]
    lines = [_turn_line(role, text) for role, text in kept]
    tail = _turn_line("user", user_text) + "\n" + AGENT_PREFIX
    start = 0
    # Fast path first (everything); otherwise drop from the oldest.
    while True:
        text = "\n".join([*lines[start:], tail])
        ids = encode(text)
        if len(ids) <= max_prompt_tokens:
            turns = tuple((role, t.strip()) for role, t in [*kept[start:], ("user", user_text)])
            return ChatPrompt(text, ids, len(lines) - start, start, turns)
        if start >= len(lines):
            raise _too_long(user_text, len(ids), max_prompt_tokens, window, reserved, unit)
        start += 1
