"""Dialogue data for the chat model: loading, validation and the "User: …\\nAgent: …" text format.

A dialogue is a list of messages in the ultrachat / OpenAI `messages` shape::

    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi!"}, ...]

Training text for one dialogue (EOS once, after the last agent turn)::

    User: hello
    Agent: hi!
    User: how are you?
    Agent: fine.<|endoftext|>

Prompts end with "Agent:" and no trailing space (GPT-2 BPE puts the space inside the next word's
token), so the model continues with " <reply>" and either emits EOS or starts "\\nUser:" (a stop string).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

USER_PREFIX = "User:"
AGENT_PREFIX = "Agent:"
ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "agent": "assistant", "gpt": "assistant"}

Message = dict[str, str]
Dialogue = list[Message]


class DialogueFormatError(ValueError):
    """Bad dialogue data; the message names the file/line and what is wrong."""


def clean_turn(text: str) -> str:
    """One line per turn: collapse whitespace (a newline inside a turn would look like a new speaker)."""
    return " ".join(str(text).split())


def normalize_dialogue(messages: Sequence[Any], *, where: str = "dialogue") -> Dialogue:
    """Validates a `messages` list and returns user/assistant turns; system messages are dropped,
    consecutive turns of one role are merged. Must contain at least one user turn followed by an
    assistant turn."""
    if not isinstance(messages, (list, tuple)):
        raise DialogueFormatError(f"{where}: 'messages' must be a list, got {type(messages).__name__}")
    out: Dialogue = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DialogueFormatError(f"{where}: message {i} must be an object with 'role' and 'content'")
        role = ROLE_ALIASES.get(str(m["role"]).lower())
        if role is None:
            if str(m["role"]).lower() == "system":
                continue
            raise DialogueFormatError(f"{where}: message {i} has unknown role {m['role']!r} (use user/assistant)")
        if not isinstance(m["content"], str):
            raise DialogueFormatError(f"{where}: message {i} content must be a string")
        content = clean_turn(m["content"])
        if not content:
            continue
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + " " + content}
        else:
            out.append({"role": role, "content": content})
    while out and out[0]["role"] != "user":
        out.pop(0)
    while out and out[-1]["role"] != "assistant":
        out.pop()
    if len(out) < 2:
        raise DialogueFormatError(f"{where}: needs a user turn followed by an assistant turn")
    return out


def turns_to_dialogue(turns: Sequence[str]) -> Dialogue:
    """Alternating turns (first speaker = user), e.g. a chatterbot-corpus conversation."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return normalize_dialogue(messages)


def format_dialogue(dialogue: Dialogue, eos_token: str = "") -> str:
    """'User: …\\nAgent: …' lines, with `eos_token` appended after the last (agent) turn."""
    lines = [f"{USER_PREFIX if m['role'] == 'user' else AGENT_PREFIX} {m['content']}" for m in dialogue]
    return "\n".join(lines) + eos_token


def format_prompt(history: Dialogue, user_text: str) -> str:
    """The prompt for the next agent reply: earlier turns, the new user turn, then 'Agent:'."""
    turns = [*history, {"role": "user", "content": clean_turn(user_text)}]
    lines = [f"{USER_PREFIX if m['role'] == 'user' else AGENT_PREFIX} {m['content']}" for m in turns]
    return "\n".join(lines) + "\n" + AGENT_PREFIX


def load_jsonl_dialogues(path: str | Path, *, skip_invalid: bool = False) -> list[Dialogue]:
    """Dialogues from a JSONL file of {"messages": [...]} objects (ultrachat shape). A bare list of
    messages per line is accepted too. Bad lines raise DialogueFormatError naming the line, unless
    `skip_invalid`."""
    path = Path(path)
    if not path.exists():
        raise DialogueFormatError(f"{path}: file does not exist")
    out: list[Dialogue] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DialogueFormatError(f"{where}: not valid JSON ({exc.msg})") from exc
                messages = obj.get("messages") if isinstance(obj, dict) else obj
                if messages is None:
                    raise DialogueFormatError(f"{where}: object has no 'messages' key")
                out.append(normalize_dialogue(messages, where=where))
            except DialogueFormatError:
                if not skip_invalid:
                    raise
    if not out:
        raise DialogueFormatError(f"{path}: no usable dialogues")
    return out


def write_jsonl_dialogues(dialogues: Iterable[Dialogue], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", encoding="utf-8") as fh:
        for d in dialogues:
            fh.write(json.dumps({"messages": d}, ensure_ascii=False) + "\n")
    return path


def chatterbot_dialogues(languages: Sequence[str] = ("english",)) -> list[Dialogue]:
    """chatterbot-corpus conversations (shipped in the package) as dialogues (parsed once per process)."""
    return [[dict(m) for m in d] for lang in languages for d in _chatterbot_dialogues(lang)]


@lru_cache(maxsize=4)
def _chatterbot_dialogues(language: str) -> tuple[Dialogue, ...]:
    from slm.data import chatterbot_conversations

    out: list[Dialogue] = []
    for conv in chatterbot_conversations(language):
        try:
            out.append(turns_to_dialogue(conv))
        except DialogueFormatError:
            continue
    return tuple(out)


def split_dialogues(
    dialogues: Sequence[Dialogue], eval_fraction: float = 0.1, *, seed: int = 0, min_eval: int = 1
) -> tuple[list[Dialogue], list[Dialogue]]:
    """Deterministic held-out split. Identical dialogues stay on one side (no leakage through
    duplicates, which chatterbot has)."""
    keys = sorted({json.dumps(d, sort_keys=True, ensure_ascii=False) for d in dialogues})
    rng = random.Random(seed)
    rng.shuffle(keys)
    n_eval = 0 if eval_fraction <= 0 or len(keys) < 2 else max(min_eval, round(len(keys) * eval_fraction))
    n_eval = min(n_eval, len(keys) - 1)
    eval_keys = set(keys[:n_eval])
    train, held = [], []
    for d in dialogues:
        (held if json.dumps(d, sort_keys=True, ensure_ascii=False) in eval_keys else train).append(list(d))
    return train, held
