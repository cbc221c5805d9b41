"""Faster inference forms of a transformer classifier: ONNX (onnxruntime), and dynamic int8.

  * `export_onnx(model, out_dir)` writes model.onnx (inputs input_ids/attention_mask, output probs,
    dynamic batch and sequence axes) + the tokenizer + config.json; `OnnxClassifier.load(dir)` predicts
    with onnxruntime behind the usual predict interface. With `int8=True` it also writes
    model.int8.onnx (onnxruntime dynamic quantisation of the MatMul weights).
  * `quantize_int8(model)` returns a CPU copy whose nn.Linear layers are int8 (slm.precision's
    `Int8Linear`, the chat engine's kernels: slm's AVX-512 VNNI (+AMX) or AVX2 kernel, or oneDNN; not
    the deprecated torch.ao quantized tensors).

Why not optimum: our saved model is encoder + our own head (not an AutoModelForSequenceClassification),
so optimum's exporters do not apply; torch.onnx's TorchScript exporter handles it directly (checked
with transformers 5.23 / torch 2.13, max |diff| vs torch ~1e-7).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slm.classify.transformer import TransformerClassifier
from slm.text import PreprocessConfig, clean_text


class _ProbsWrapper(nn.Module):
    def __init__(self, model: TransformerClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(input_ids=input_ids, attention_mask=attention_mask), dim=-1)


def export_onnx(
    model: TransformerClassifier, out_dir: str | Path, *, int8: bool = False, opset: int = 17
) -> dict[str, Path]:
    """Exports to out_dir; returns {"onnx": path, "int8": path (if asked)}."""
    import warnings

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).to("cpu").eval()
    sample = model.tokenize(["样例文本 sample text", "短"])
    path = out_dir / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ProbsWrapper(model),
            (sample["input_ids"], sample["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["probs"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "probs": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    model.tokenizer.save_pretrained(out_dir / "tokenizer")
    config = model.config_dict()
    config["family"] = "onnx"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    out = {"onnx": path}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q_path = out_dir / "model.int8.onnx"
        quantize_dynamic(str(path), str(q_path), weight_type=QuantType.QInt8)
        out["int8"] = q_path
    return out


class OnnxClassifier:
    """onnxruntime inference behind the predict interface (labels, predict_proba)."""

    family = "onnx"

    def __init__(self, session: Any, tokenizer: Any, config: dict[str, Any]) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.labels = [str(x) for x in config["labels"]]
        self.max_length = int(config.get("max_length", 200))
        limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < self.max_length:
            self.max_length = limit
        self.preprocess_config = PreprocessConfig.from_dict(config.get("preprocess"))

    @classmethod
    def load(cls, directory: str | Path, *, int8: bool = False, threads: int = 0) -> OnnxClassifier:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        directory = Path(directory)
        path = directory / ("model.int8.onnx" if int8 else "model.onnx")
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (run export_sentiment{' --int8' if int8 else ''})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"), local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
        config = json.loads((directory / "config.json").read_text())
        return cls(session, tokenizer, config)

    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        docs = [clean_text(t, self.preprocess_config) for t in texts]
        out = np.zeros((len(docs), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [docs[i] for i in idx], truncation=True, max_length=self.max_length, padding=True, return_tensors="np"
            )
            feeds = {
                "input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64),
            }
            out[idx] = self.session.run(["probs"], feeds)[0]
        return out


def quantize_int8(model: TransformerClassifier) -> TransformerClassifier:
    """A CPU copy whose nn.Linear layers are int8 (weights per channel, activations per row), through the
    same `Int8Linear` the chat engine serves with. Raises where no int8 kernel can run."""
    from slm.precision import int8_available
    from slm.precision import quantize_int8 as int8_in_place

    if not int8_available():
        raise RuntimeError("int8 needs torch built with oneDNN (x86 or ARM); this build has none")
    return int8_in_place(copy.deepcopy(model).to("cpu").eval())
