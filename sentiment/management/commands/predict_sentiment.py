"""Predict sentiment from the command line.

manage.py predict_sentiment "这家店很好吃" "terrible service"      # texts as arguments
manage.py predict_sentiment --input reviews.csv --output labelled.csv [--text-column review]
manage.py predict_sentiment                                       # interactive prompt (empty line / EOF quits)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from slm.registry import RegistryError
from slmsite.registry import get_registry


class Command(BaseCommand):
    help = "Predicts sentiment for texts given as arguments, a file (CSV/JSONL/TXT -> CSV/JSONL) or a prompt."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("texts", nargs="*")
        parser.add_argument("--model-version", dest="version", default=None, help="version (v0003) or live (default)")
        parser.add_argument("--name", default=None, help="registry model name (default SENTIMENT_MODEL)")
        parser.add_argument("--input", help="CSV/TSV/JSONL/TXT file of texts")
        parser.add_argument("--output", help="write predictions here (.csv or .jsonl); default: stdout")
        parser.add_argument("--text-column", default="text")
        parser.add_argument("--batch-size", type=int, default=64)

    def handle(self, *args: Any, **opts: Any) -> None:
        from slm.classify.base import load_classifier
        from slm.sentiment_data import read_texts_file

        name = opts["name"] or settings.SENTIMENT_MODEL
        try:
            mv = get_registry().get(name, opts["version"])
            model = load_classifier(mv.path)
        except (RegistryError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if opts["input"]:
            try:
                texts = read_texts_file(opts["input"], text_column=opts["text_column"])
            except (ValueError, FileNotFoundError) as exc:
                raise CommandError(str(exc)) from exc
            rows = self._predict(model, texts, opts["batch_size"])
            self._write(rows, model.labels, opts.get("output"))
            if opts.get("output"):
                self.stdout.write(f"{len(rows)} predictions by {mv.ref} written to {opts['output']}")
            return
        if opts["texts"]:
            for row in self._predict(model, opts["texts"], opts["batch_size"]):
                self.stdout.write(self._line(row))
            return
        interactive = sys.stdin.isatty()
        if interactive:
            self.stdout.write(f"{mv.ref} — type a text and press Enter (empty line or Ctrl-D quits)")
        while True:
            if interactive:
                self.stdout.write("> ", ending="")
                self.stdout.flush()
            line = sys.stdin.readline()
            if not line or not line.strip():
                break
            self.stdout.write(self._line(self._predict(model, [line.rstrip("\n")], 1)[0]))

    @staticmethod
    def _predict(model: Any, texts: list[str], batch_size: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for start in range(0, len(texts), max(1, batch_size)):
            chunk = texts[start : start + batch_size]
            probs = model.predict_proba(chunk)
            for text, p in zip(chunk, probs, strict=True):
                best = int(p.argmax())
                rows.append(
                    {
                        "text": text,
                        "label": model.labels[best],
                        "score": round(float(p[best]), 4),
                        "probs": {lab: round(float(v), 4) for lab, v in zip(model.labels, p, strict=True)},
                    }
                )
        return rows

    @staticmethod
    def _line(row: dict[str, Any]) -> str:
        probs = " ".join(f"{k}={v:.3f}" for k, v in row["probs"].items())
        return f"{row['label']}\t{row['score']:.3f}\t{probs}\t{row['text']}"

    def _write(self, rows: list[dict[str, Any]], labels: list[str], output: str | None) -> None:
        if output and Path(output).suffix.lower() in (".jsonl", ".json"):
            with open(output, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        fh = open(output, "w", encoding="utf-8", newline="") if output else None  # noqa: SIM115
        try:
            writer = csv.writer(fh or self.stdout)
            writer.writerow(["text", "label", "score", *[f"p_{lab}" for lab in labels]])
            for row in rows:
                writer.writerow([row["text"], row["label"], row["score"], *[row["probs"][lab] for lab in labels]])
        finally:
            if fh:
                fh.close()
