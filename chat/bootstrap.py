"""The default chat model, built offline by `manage.py bootstrap_models chat`.

A small GPT2LMHeadModel (4 layers, 128 wide, ~1.4M params) trained from scratch on the English
chatterbot-corpus conversations that ship in the `chatterbot-corpus` package, formatted
"User: …\nAgent: …" + EOS, with a 4,096-token byte-level BPE trained on the same corpus.

Choices, measured on the shared 2-core CPU of the build machine (numbers in the chat report):
* tokenizer: a training step with GPT-2's 50,257-row embedding/LM head took ~4x as long as with a
  4,096 vocab (4 layers, 256 wide: the head is most of the compute) and the corpus BPE needs fewer
  tokens, so the default uses the corpus BPE. `slm.tokenizer_build.gpt2_tokenizer()` (tokenizer="gpt2")
  gives GPT-2's exact ids when wanted.
* threads: one torch thread trained 5-10x faster than two on the loaded machine (two threads wait on
  each other when other processes hold a core), so the build sets num_threads=1.
* English only: the 467 Chinese conversations added tokens but a model this small mixed the languages.

Training stops at a wall-clock budget (settings.CHAT_BOOTSTRAP_MAX_TIME_S, the LR schedule runs on
time) so the whole bootstrap stays bounded on a loaded machine; the weights of the epoch with the best
held-out loss are kept. settings.CHAT_BOOTSTRAP_SIZE="tiny" builds a seconds-sized model for tests and
browser tests (`build_tiny_chat_version`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from django.conf import settings

from slm.chat_data import Dialogue, chatterbot_dialogues, format_dialogue, split_dialogues
from slm.data import data_hash
from slm.lm_train import LMTrainConfig, new_gpt2_model, save_model, train_causal_lm
from slm.registry import ModelVersion, Registry
from slm.tokenizer_build import build_tokenizer
from slmsite.bootstrap import Builder, register

BuildProgress = Callable[[str, float], None]


@dataclass
class ChatBuildConfig:
    languages: tuple[str, ...] = ("english",)
    max_dialogues: int | None = None  # cap (tiny builds)
    eval_fraction: float = 0.1
    tokenizer: str = "bpe"  # bpe (trained on the corpus) | gpt2 (real GPT-2 ids, 50,257 rows)
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256
    dropout: float = 0.1
    train: LMTrainConfig = field(
        default_factory=lambda: LMTrainConfig(
            epochs=40, lr=2e-3, batch_size=16, warmup_ratio=0.03, max_time_s=210, num_threads=1, log_every=20
        )
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TINY_CONFIG = ChatBuildConfig(
    languages=("english",),
    max_dialogues=96,
    tokenizer="bpe",
    vocab_size=320,
    n_layer=1,
    n_embd=32,
    n_head=2,
    n_positions=128,
    train=LMTrainConfig(epochs=2, lr=3e-3, batch_size=16, max_length=128, log_every=5, keep_best=False, num_threads=1),
)


def default_config() -> ChatBuildConfig:
    size = settings.CHAT_BOOTSTRAP_SIZE
    if size == "tiny":
        return TINY_CONFIG
    cfg = ChatBuildConfig()
    budget = settings.CHAT_BOOTSTRAP_MAX_TIME_S
    if budget:
        cfg = replace(cfg, train=replace(cfg.train, max_time_s=float(budget)))
    return cfg


def _dialogues(cfg: ChatBuildConfig) -> list[Dialogue]:
    dialogues = chatterbot_dialogues(cfg.languages)
    if cfg.max_dialogues is not None:
        dialogues = dialogues[: cfg.max_dialogues]
    return dialogues


def progress_text(epoch: int, loss: float, eta_s: float | None) -> str:
    """The building banner's words: "epoch 1 · loss 6.88 · about 3 min left" (not "eta 203s")."""
    text = f"epoch {epoch} · loss {loss:.3g}"
    if eta_s is None:
        return text
    left = "under a minute left" if eta_s < 60 else f"about {round(eta_s / 60)} min left"
    return f"{text} · {left}"


def build_chat_version(
    registry: Registry,
    cfg: ChatBuildConfig,
    *,
    name: str = "chat",
    promote: bool = True,
    progress: BuildProgress | None = None,
) -> ModelVersion:
    """Trains a chat model from scratch on the bundled conversations and registers it (optionally live)."""

    def report(message: str, fraction: float) -> None:
        if progress is not None:
            progress(message, fraction)

    report("loading conversations", 0.0)
    dialogues = _dialogues(cfg)
    train_d, eval_d = split_dialogues(dialogues, cfg.eval_fraction, seed=cfg.train.seed)
    train_texts = [format_dialogue(d) for d in train_d]
    eval_texts = [format_dialogue(d) for d in eval_d]
    report(f"tokenizer ({cfg.tokenizer})", 0.02)
    tokenizer = build_tokenizer(cfg.tokenizer, train_texts, vocab_size=cfg.vocab_size)
    model = new_gpt2_model(
        tokenizer,
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        n_head=cfg.n_head,
        n_positions=cfg.n_positions,
        dropout=cfg.dropout,
        seed=cfg.train.seed,
    )
    train_cfg = replace(cfg.train, max_length=min(cfg.train.max_length, cfg.n_positions))

    def on_progress(info: dict[str, Any]) -> None:
        report(progress_text(info["epoch"], info["loss"], info.get("eta_s")), 0.05 + 0.9 * float(info["fraction"]))

    result = train_causal_lm(model, tokenizer, train_texts, eval_texts, train_cfg, progress=on_progress)
    metrics = {k: result.metrics[k] for k in ("eval_loss", "perplexity", "train_time_s") if k in result.metrics}
    metrics.update({k: v for k, v in result.metrics.items() if k not in metrics})
    report("saving", 0.97)

    def write(directory: Path) -> None:
        save_model(model, tokenizer, directory)
        (directory / "train_log.txt").write_text("\n".join(result.log) + "\n", encoding="utf-8")

    metadata = {
        "config": {**cfg.to_dict(), "train": train_cfg.to_dict()},
        "data_hash": data_hash(dialogues),
        "data": {"source": "chatterbot-corpus", "languages": list(cfg.languages), "dialogues": len(dialogues)},
        "metrics": metrics,
        "family": "gpt2",
        "demo": True,  # the offline demo model: the chat page says how to get a real one
        "format": {"user": "User:", "agent": "Agent:", "eos": tokenizer.eos_token, "stop": ["User:"]},
        "tokenizer": {"kind": cfg.tokenizer, "vocab_size": len(tokenizer)},
    }
    mv = registry.create_version(name, write, metadata, parent=None)
    if promote:
        registry.promote(name, mv.version)
    return mv


def build_tiny_chat_version(registry: Registry, name: str = "chat", *, promote: bool = True) -> ModelVersion:
    """A seconds-sized chat model version (1 layer, 32 wide, 320-token BPE) for tests and e2e stacks."""
    return build_chat_version(registry, TINY_CONFIG, name=name, promote=promote)


def build_default_chat(registry: Registry, progress: BuildProgress) -> None:
    build_chat_version(registry, default_config(), name="chat", promote=True, progress=progress)


register(
    Builder(
        name="chat",
        model_name="chat",
        build=build_default_chat,
        order=20,
        description="small GPT-2 trained on the bundled chatterbot conversations (User:/Agent:)",
    )
)
