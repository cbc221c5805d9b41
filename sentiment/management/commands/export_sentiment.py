"""Export a transformer-family sentiment version to ONNX (+ dynamic int8) and check it against torch.

    manage.py export_sentiment --output var/export/sentiment [--version v0002] [--int8]

The n-gram family needs no export: it is already a sparse dot product in NumPy (no torch at all).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from slm.registry import RegistryError
from slmsite.registry import get_registry

PROBE = ["这家店的菜很好吃，服务也周到", "质量太差了，非常失望", "great value, works perfectly", "terrible, refund"]


class Command(BaseCommand):
    help = "Exports a transformer sentiment version to ONNX (onnxruntime) and optionally int8."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-version", dest="version", default=None, help="version (v0002) or live (default)")
        parser.add_argument("--name", default=None, help="registry model name (default SENTIMENT_MODEL)")
        parser.add_argument("--output", required=True, help="directory to write model.onnx (+ model.int8.onnx) to")
        parser.add_argument("--int8", action="store_true", help="also write a dynamic-int8 quantised model")

    def handle(self, *args: Any, **opts: Any) -> None:
        from slm.classify.base import load_classifier
        from slm.classify.export import OnnxClassifier, export_onnx
        from slm.classify.transformer import TransformerClassifier

        name = opts["name"] or settings.SENTIMENT_MODEL
        try:
            mv = get_registry().get(name, opts["version"])
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        family = mv.metadata.get("family", "transformer")
        if family != "transformer":
            raise CommandError(
                f"{mv.ref} is a {family!r} model; ONNX export is for the transformer family "
                "(n-gram models are already plain NumPy dot products)"
            )
        model = load_classifier(mv.path)
        assert isinstance(model, TransformerClassifier)
        out = Path(opts["output"])
        started = time.perf_counter()
        paths = export_onnx(model, out, int8=opts["int8"])
        self.stdout.write(f"exported {mv.ref} to {paths['onnx']} in {time.perf_counter() - started:.1f}s")
        reference = model.predict_proba(PROBE)
        for kind, path in paths.items():
            onnx_model = OnnxClassifier.load(out, int8=kind == "int8")
            diff = float(np.abs(onnx_model.predict_proba(PROBE) - reference).max())
            agree = bool((onnx_model.predict_proba(PROBE).argmax(1) == reference.argmax(1)).all())
            size = path.stat().st_size / 1e6
            self.stdout.write(
                f"  {kind:5s} {path.name}: {size:.1f} MB, max |p - p_torch| = {diff:.2e}, same labels: {agree}"
            )
