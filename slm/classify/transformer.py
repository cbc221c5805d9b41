"""Any AutoModel encoder + a classification head — the `transformer` family.

Saved layout (a registry version directory)::

    config.json          {"family": "transformer", "labels", "label2id", "id2label", "pooling",
                          "head_hidden", "dropout", "max_length", "preprocess", "encoder_source", "mode"}
    encoder/             encoder.save_pretrained (safetensors) + tokenizer files; its config.json also
                         carries label2id/id2label
    head.safetensors     the head's weights

LoRA adapters are merged into the encoder before saving, so every saved model loads the same way and
predicts at full speed without peft.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slm.text import PreprocessConfig, clean_text, tokenizer_is_uncased

POOLINGS = ("cls", "mean", "pooler")


class ClassificationHead(nn.Module):
    """dropout -> linear (the seed's fully connected head), or dropout -> linear -> tanh -> dropout -> linear."""

    def __init__(self, hidden_size: int, n_labels: int, *, dropout: float = 0.1, head_hidden: int = 0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        if head_hidden:
            self.dense: nn.Module = nn.Linear(hidden_size, head_hidden)
            self.out = nn.Linear(head_hidden, n_labels)
        else:
            self.dense = nn.Identity()
            self.out = nn.Linear(hidden_size, n_labels)
        self.head_hidden = head_hidden

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features)
        if self.head_hidden:
            x = self.dropout(torch.tanh(self.dense(x)))
        return self.out(x)


def pool(outputs: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError("this encoder has no pooler output; use pooling='cls' or 'mean'")
        return pooled
    hidden = outputs.last_hidden_state
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return hidden[:, 0]


class TransformerClassifier(nn.Module):
    family = "transformer"

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        labels: Sequence[str],
        *,
        pooling: str = "cls",
        head_hidden: int = 0,
        dropout: float = 0.1,
        max_length: int = 200,
        preprocess: dict[str, Any] | None = None,
        encoder_source: str = "",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}")
        if len(labels) < 2:
            raise ValueError("need at least two labels")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.labels = [str(x) for x in labels]
        self.pooling = pooling
        self.max_length = int(max_length)
        self.encoder_source = encoder_source
        self.mode = "frozen"
        self.pruned_heads: list[dict[int, list[int]]] = []  # head-pruning steps applied, in order
        hidden = int(getattr(encoder.config, "hidden_size", 0) or getattr(encoder.config, "dim", 0))
        if not hidden:
            raise ValueError("cannot tell the encoder's hidden size from its config")
        self.hidden_size = hidden
        self.head = ClassificationHead(hidden, len(self.labels), dropout=dropout, head_hidden=head_hidden)
        self.head_hidden = head_hidden
        self.dropout_p = dropout
        pre = dict(preprocess or {"strip_html": True, "strip_special": True})
        if pre.get("lowercase") is None:
            pre["lowercase"] = tokenizer_is_uncased(tokenizer)
        self.preprocess_config = PreprocessConfig.from_dict(pre)
        self._set_label_config()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_encoder(
        cls, source: str | Path, labels: Sequence[str], *, registry: Any = None, **kwargs: Any
    ) -> TransformerClassifier:
        """Encoder + tokenizer from a hub id, local directory or `registry:<name>` (offline), new head."""
        from transformers import AutoModel, AutoTokenizer

        from slm.loader import load_pretrained

        encoder = load_pretrained(AutoModel, str(source), registry=registry)
        tokenizer = load_pretrained(AutoTokenizer, str(source), registry=registry)
        return cls(encoder, tokenizer, labels, encoder_source=str(source), **kwargs)

    def replay_pruning(self, steps: Sequence[dict[Any, Sequence[int]]]) -> None:
        """Removes attention heads as recorded (each step: {layer: [head, ...]}), e.g. after loading."""
        from slm.classify.prune import remove_heads

        for step in steps:
            heads = {int(layer): [int(h) for h in drop] for layer, drop in step.items()}
            remove_heads(self.encoder, heads)
            self.pruned_heads.append(heads)

    def _set_label_config(self) -> None:
        cfg = self.encoder.config
        cfg.id2label = {i: lab for i, lab in enumerate(self.labels)}
        cfg.label2id = {lab: i for i, lab in enumerate(self.labels)}

    @property
    def usable_length(self) -> int:
        """max_length, capped by the encoder's position embeddings (a longer text would crash it)."""
        limit = getattr(self.encoder.config, "max_position_embeddings", None)
        return min(self.max_length, int(limit)) if limit else self.max_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---------------------------------------------------------------- forward
    def clean(self, texts: Sequence[str]) -> list[str]:
        return [clean_text(t, self.preprocess_config) for t in texts]

    def tokenize(self, texts: Sequence[str], *, cleaned: bool = False) -> dict[str, torch.Tensor]:
        docs = list(texts) if cleaned else self.clean(texts)
        enc = self.tokenizer(docs, truncation=True, max_length=self.usable_length, padding=True, return_tensors="pt")
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def encode(self, **batch: torch.Tensor) -> torch.Tensor:
        outputs = self.encoder(**batch)
        return pool(outputs, batch["attention_mask"], self.pooling)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(**batch))

    @torch.no_grad()
    def features(self, texts: Sequence[str], *, batch_size: int = 64, cleaned: bool = False) -> torch.Tensor:
        """Pooled encoder features (n, hidden) in eval mode; batches are length-sorted for speed."""
        was_training = self.training
        self.eval()
        docs = list(texts) if cleaned else self.clean(texts)
        order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
        out = torch.zeros(len(docs), self.hidden_size)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenize([docs[i] for i in idx], cleaned=True)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            out[idx] = self.encode(**batch).float().cpu()
        self.train(was_training)
        return out

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        was_training = self.training
        self.eval()
        docs = self.clean(texts)
        order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
        probs = np.zeros((len(docs), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenize([docs[i] for i in idx], cleaned=True)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            logits = self(**batch).float()
            probs[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
        self.train(was_training)
        return probs

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(axis=1)]

    # ---------------------------------------------------------------- persistence
    def config_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "labels": self.labels,
            "id2label": {str(i): lab for i, lab in enumerate(self.labels)},
            "label2id": {lab: i for i, lab in enumerate(self.labels)},
            "pooling": self.pooling,
            "head_hidden": self.head_hidden,
            "dropout": self.dropout_p,
            "max_length": self.max_length,
            "preprocess": self.preprocess_config.to_dict(),
            "encoder_source": self.encoder_source,
            "mode": self.mode,
            "pruned_heads": [{str(k): v for k, v in step.items()} for step in self.pruned_heads],
        }

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        encoder = self.encoder
        if hasattr(encoder, "merge_and_unload"):  # peft LoRA: fold the adapters in
            encoder = encoder.merge_and_unload()
            self.encoder = encoder
        self._set_label_config()
        encoder.save_pretrained(directory / "encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(directory / "encoder")
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(directory / "head.safetensors"))
        (directory / "config.json").write_text(json.dumps(self.config_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device | None = "cpu") -> TransformerClassifier:
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        if not (directory / "config.json").exists() or not (directory / "encoder").is_dir():
            raise FileNotFoundError(f"{directory} is not a saved transformer classifier (config.json + encoder/)")
        cfg = json.loads((directory / "config.json").read_text())
        if cfg.get("pruned_heads"):  # smaller attention layers than the encoder's config says: rebuild them
            from transformers import AutoConfig

            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(directory / "encoder")))  # nosec B615 - a local directory (a saved version)
        else:
            encoder = AutoModel.from_pretrained(str(directory / "encoder"), local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
        tokenizer = AutoTokenizer.from_pretrained(str(directory / "encoder"), local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
        model = cls(
            encoder,
            tokenizer,
            cfg["labels"],
            pooling=cfg.get("pooling", "cls"),
            head_hidden=int(cfg.get("head_hidden", 0)),
            dropout=float(cfg.get("dropout", 0.1)),
            max_length=int(cfg.get("max_length", 200)),
            preprocess=cfg.get("preprocess"),
            encoder_source=cfg.get("encoder_source", ""),
        )
        model.mode = cfg.get("mode", "frozen")
        if cfg.get("pruned_heads"):
            model.replay_pruning(cfg["pruned_heads"])
            model.encoder.load_state_dict(load_file(str(directory / "encoder" / "model.safetensors")))
        model.head.load_state_dict(load_file(str(directory / "head.safetensors")))
        model.eval()
        if device is not None:
            model.to(device)
        return model
