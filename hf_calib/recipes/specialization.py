"""The specialization sweep (Faysse et al., EMNLP 2023): general instruction data plus ``n`` target examples, per ``n``.

For each ``n`` in ``n_values`` a fresh LoRA adapter is trained on the base model with
:class:`~hf_calib.CalibratedTrainer` (through :func:`hf_calib.recipes.sft.finetune_chat_lora`) on a fixed set of
general chats mixed with the first ``n`` target-task examples of one seeded shuffle (so the ``n = 10`` examples are
among the ``n = 100`` ones), for the same number of steps, with the same seed. The base model is evaluated once
as the reference point. Each model is scored on

- the **target task**: accuracy and ECE of the label tokens' first-step logits (the classification protocol of
  :func:`hf_calib.eval.evaluate_domains`), and exact match of a short greedy reply (did it learn the format?);
- **general ability**: ROUGE-L of greedy replies to held-out chats against their references
  (:func:`hf_calib.eval.evaluate_generation`), plus an optional judge's scores (any object with
  ``score(instructions, responses, references)`` returning a result with ``metrics()``, e.g.
  :class:`hf_calib.eval.LLMJudge`);
- **token calibration** on the held-out chats (``CalibratedTrainer.evaluate()``: ``token_ece``, ``token_nll`` ...),
  and optionally **multiple-choice calibration** (a :class:`hf_calib.eval.MultipleChoiceCalibration`).

The result is a :class:`hf_calib.eval.specialization.SpecializationReport` (table, JSON, trade-off plot).
"""

from __future__ import annotations

import math
import random
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._model_utils import input_device
from ..data import IGNORE_INDEX, TaskTemplate, task_dataset
from ..eval.specialization import SpecializationPoint, SpecializationReport, label_scores, standard_error

__all__ = [
    "SENTIMENT_TEMPLATE",
    "SweepData",
    "SweepSettings",
    "mix_with_target",
    "offline_sweep_data",
    "specialization_sweep",
]

#: Movie-review sentiment as a chat turn (the template of examples/fticl_sentiment.py).
SENTIMENT_TEMPLATE = TaskTemplate(
    prompt="Review: {text}\nSentiment (positive or negative):",
    completion=" {label}",
    verbalizers={"label": ["negative", "positive"]},
)


@dataclass
class SweepSettings:
    """Training and evaluation knobs shared by every ``n`` (the same steps, data and seed for all)."""

    steps: int = 30
    batch_size: int = 4
    learning_rate: float = 1e-3
    label_smoothing: float = 0.1
    max_length: int = 128
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    #: Held-out chats whose greedy replies are scored (ROUGE-L, judge); None: all of ``general_eval``.
    general_prompts: int | None = None
    max_new_tokens: int = 48
    #: Target prompts whose greedy reply is checked for the label word (exact match); 0 skips it.
    exact_match_prompts: int = 50
    batch_size_eval: int = 8
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "lora_r", "max_new_tokens", "batch_size_eval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive finite number; got {self.learning_rate}.")
        if self.general_prompts is not None and self.general_prompts < 1:
            raise ValueError(f"general_prompts must be positive or None; got {self.general_prompts}.")
        if self.exact_match_prompts < 0:
            raise ValueError(f"exact_match_prompts must be 0 or more; got {self.exact_match_prompts}.")


def check_n_values(n_values: Sequence[int], available: int, name: str = "n_values") -> list[int]:
    """``n_values`` as a list of distinct integers in ``[0, available]``; ``ValueError`` naming the bad value."""
    if isinstance(n_values, int | str) or not len(n_values):
        raise ValueError(f"{name} must be a non-empty list of example counts, e.g. (0, 10, 100); got {n_values!r}.")
    out = []
    for n in n_values:
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"{name} must hold integers; got {n!r}.")
        if n < 0:
            raise ValueError(f"{name} holds {n}; the number of target examples cannot be negative.")
        if n > available:
            raise ValueError(
                f"{name} holds {n} but only {available} target training examples are available; lower n or add "
                "target training rows."
            )
        if n in out:
            raise ValueError(f"{name} holds {n} twice; list each count once.")
        out.append(n)
    return out


def mix_with_target(general: Any, target: Any, n: int, *, seed: int) -> Any:
    """All of ``general`` plus the first ``n`` rows of ``target``, in an order shuffled with ``seed``.

    Both are ``datasets.Dataset`` with the same columns (e.g. tokenized ``input_ids``/``attention_mask``/``labels``);
    shuffle ``target`` beforehand (the sweep does, with its seed), so the first ``n`` rows are a random sample and
    the rows of a smaller ``n`` are among those of a larger one.
    """
    import datasets

    if len(general) == 0:
        raise ValueError("general is empty; the mix needs general instruction data.")
    check_n_values([n], len(target), name="n")
    if set(general.column_names) != set(target.column_names):
        raise ValueError(
            f"general and target must have the same columns; got {general.column_names} and {target.column_names}."
        )
    if n == 0:
        return general.shuffle(seed=seed).flatten_indices()
    part = target.select(range(n)).select_columns(general.column_names).cast(general.features)
    return datasets.concatenate_datasets([general, part]).shuffle(seed=seed).flatten_indices()


def _evaluate(model, tokenizer, data: SweepData, template, settings, judge, mc_eval) -> dict[str, float]:
    """Every metric of one model but the token calibration (which comes from the trainer)."""
    from ..eval import GenerationTask, evaluate_generation
    from ..eval.reference import rouge_l_scores

    quiet = not settings.show_progress
    metrics = label_scores(
        model, tokenizer, data.target_eval, template, batch_size=settings.batch_size_eval, show_progress=not quiet
    )
    options = dict(batch_size=settings.batch_size_eval, show_progress=not quiet)
    if settings.exact_match_prompts:
        rows = data.target_eval.select(range(min(settings.exact_match_prompts, len(data.target_eval))))
        rendered = [template.render(row) for row in rows]
        target = GenerationTask(
            "target",
            [p for p, _ in rendered],
            [c.strip() for _, c in rendered],
            metrics=("exact_match",),
            max_new_tokens=4,
        )
        metrics["target_exact_match"] = evaluate_generation(model, tokenizer, target, **options)[
            "gen/target/exact_match"
        ]
    chats = data.general_eval["messages"]
    prompts, references = [c[0]["content"] for c in chats], [c[-1]["content"] for c in chats]
    general = GenerationTask("general", prompts, references, judge=judge, max_samples=settings.general_prompts)
    scores = evaluate_generation(model, tokenizer, general, max_new_tokens=settings.max_new_tokens, **options)
    metrics.update({f"general_{k.split('/', 2)[2]}": float(v) for k, v in scores.items()})
    per_reply = rouge_l_scores(general.last_generations, general.selected()[1])
    metrics["general_rougeL_se"] = standard_error(per_reply)
    if mc_eval is not None:
        found = mc_eval.evaluate(model, tokenizer, show_progress=not quiet)
        metrics.update({f"mc_{k.rsplit('/', 1)[1]}": float(v) for k, v in found.items() if "/macro/" in k})
    return metrics


@dataclass
class SweepData:
    """The four data sets of a sweep: general chats to train on and to hold out (``messages`` rows), and target-task
    rows to train on and to evaluate (the columns of the template, e.g. ``text`` and ``label``)."""

    general_train: Any
    general_eval: Any
    target_train: Any
    target_eval: Any


def _clean_review(text: str, max_chars: int) -> str:
    """Drop IMDB's ``<br />`` tags, squeeze whitespace and cut at a word boundary to at most ``max_chars``."""
    text = " ".join(re.sub(r"<br\s*/?>", " ", text).split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 3]
    return (cut[: cut.rfind(" ")] if " " in cut else cut) + "..."


def offline_sweep_data(
    *,
    source: str = "rotten_tomatoes",
    general_examples: int = 160,
    general_eval: int = 24,
    target_pool: int = 100,
    target_eval: int = 200,
    max_chars: int = 500,
    seed: int = 0,
) -> SweepData:
    """The offline sweep data: ShareGPT first exchanges of at most ``max_chars`` characters (``general_eval`` of
    them held out, drawn with ``seed``) and movie reviews of ``source`` shuffled with ``seed`` (the first
    ``target_eval`` held out, the next ``target_pool`` to train on; reviews cut to ``max_chars`` characters)."""
    from ..assets import load_movie_reviews, load_sharegpt_turns

    for name, value in (
        ("general_examples", general_examples),
        ("general_eval", general_eval),
        ("target_eval", target_eval),
    ):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value}.")
    if target_pool < 0:
        raise ValueError(f"target_pool must be 0 or more; got {target_pool}.")
    chats = load_sharegpt_turns(limit=general_examples + general_eval, max_chars=max_chars)
    if len(chats) < general_examples + general_eval:
        raise ValueError(f"only {len(chats)} ShareGPT turns fit max_chars={max_chars}; ask for fewer or raise it.")
    split = chats.train_test_split(test_size=general_eval, seed=seed)
    reviews = load_movie_reviews(source)
    if target_eval + target_pool > len(reviews):
        raise ValueError(
            f"{source} has {len(reviews)} reviews, fewer than target_eval + target_pool = {target_eval + target_pool}."
        )
    reviews = reviews.shuffle(seed=seed).select(range(target_eval + target_pool))  # the file is sorted by label
    reviews = reviews.map(lambda row: {"text": _clean_review(row["text"], max_chars)}, desc=f"cleaning {source}")
    return SweepData(
        general_train=split["train"],
        general_eval=split["test"],
        target_train=reviews.select(range(target_eval, target_eval + target_pool)),
        target_eval=reviews.select(range(target_eval)),
    )


def _training_arguments(settings: SweepSettings, output_dir: Path, device: torch.device) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=settings.steps,
        label_smoothing_factor=settings.label_smoothing,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size_eval,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(2, settings.steps - 1),
        logging_steps=max(1, settings.steps // 8),
        save_strategy="no",
        report_to=[],
        use_cpu=device.type == "cpu",
        seed=settings.seed,
        data_seed=settings.seed,
        disable_tqdm=not settings.show_progress,
    )


def _tokenized(data: SweepData, tokenizer: Any, template: TaskTemplate, settings: SweepSettings, n_max: int):
    """``(general_train, general_eval, target)`` tokenized; ``target``: the first ``n_max`` rows, seeded shuffle."""
    from .sft import tokenize_turns

    general = tokenize_turns(data.general_train, tokenizer, settings.max_length)
    held_out = tokenize_turns(data.general_eval, tokenizer, settings.max_length)
    if len(general) < settings.batch_size or len(held_out) == 0:
        raise ValueError(
            f"{len(general)} general training chats and {len(held_out)} held-out chats have a supervised token within "
            f"max_length={settings.max_length}; need at least batch_size={settings.batch_size} and 1."
        )
    order = random.Random(settings.seed).sample(range(len(data.target_train)), n_max)
    target = task_dataset(
        data.target_train.select(order), template, tokenizer, max_length=settings.max_length, drop_unsupervised=False
    )
    if any(all(t == IGNORE_INDEX for t in labels) for labels in target["labels"]):
        raise ValueError(f"a target example has no label token within max_length={settings.max_length}; raise it.")
    return general, held_out, target


def _train_and_evaluate(
    model, tokenizer, data, template, settings, sft, general, held_out, target, n, root, adapter_dir, judge, mc_eval
) -> tuple[SpecializationPoint, dict[str, float]]:
    """Train one adapter on the mix of ``n`` and score it; return its point and the evaluation before training."""
    from .sft import finetune_chat_lora

    mix = mix_with_target(general, target, n, seed=settings.seed)
    args = _training_arguments(settings, root / f"n{n}", input_device(model))
    start = time.perf_counter()
    outcome = finetune_chat_lora(model, tokenizer, mix, held_out, sft, output_dir=root / f"n{n}", training_args=args)
    metrics = {**_evaluate(outcome.model, tokenizer, data, template, settings, judge, mc_eval), **outcome.after}
    training = {
        "steps": outcome.steps,
        "train_seconds": outcome.seconds,
        "seconds": time.perf_counter() - start,
        "mix_rows": len(mix),
        "target_rows": n,
        "final_loss": outcome.losses[-1][1] if outcome.losses else None,
    }
    if adapter_dir is not None:
        outcome.model.save_pretrained(Path(adapter_dir) / f"n{n}")
    return SpecializationPoint(f"n={n}", n, metrics, training), outcome.before


#: SweepSettings fields passed on to the SFT recipe's settings unchanged.
_SFT_FIELDS = (
    "label_smoothing", "max_length", "batch_size", "learning_rate", "lora_r", "lora_targets", "seed", "show_progress",
)  # fmt: skip


def specialization_sweep(
    model_loader: Callable[[], nn.Module],
    tokenizer: Any,
    data: SweepData,
    n_values: Sequence[int] = (0, 10, 100),
    *,
    template: TaskTemplate = SENTIMENT_TEMPLATE,
    settings: SweepSettings | None = None,
    judge: Any = None,
    mc_eval: Any = None,
    output_dir: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    title: str = "Specialization trade-off",
    command: str | None = None,
) -> SpecializationReport:
    """Evaluate the base model, then fine-tune and evaluate one LoRA adapter per ``n`` in ``n_values``.

    ``model_loader()`` returns a fresh base model each call (on the device to use; it is called after seeding
    with ``settings.seed``, so a random initialisation is the same each time). ``data`` holds general chats and
    target rows (:func:`offline_sweep_data` builds the offline ones); ``template`` renders a target row as
    ``(prompt, label word)``. ``judge`` (scores the general replies) and ``mc_eval`` (a
    :class:`~hf_calib.eval.MultipleChoiceCalibration`) are optional. ``output_dir`` receives Trainer's scratch
    files (a temporary folder when None); ``adapter_dir`` (optional) one saved adapter per ``n`` (``n0``, ``n10`` ...).
    """
    from transformers import set_seed

    from .sft import SFTSettings

    settings = settings or SweepSettings()
    for name in ("general_train", "general_eval", "target_train", "target_eval"):
        if getattr(data, name) is None or len(getattr(data, name)) == 0:
            raise ValueError(f"data.{name} is empty; every part of the sweep data needs rows.")
    n_values = check_n_values(n_values, len(data.target_train))
    general, held_out, target = _tokenized(data, tokenizer, template, settings, max(n_values))
    sft = SFTSettings(**{name: getattr(settings, name) for name in _SFT_FIELDS})
    report = SpecializationReport(
        title=title,
        settings={
            **({"command": command} if command else {}),
            **asdict(settings),
            "n_values": n_values,
            "general_train_chats": len(general),
            "general_eval_chats": len(held_out),
            "target_eval_rows": len(data.target_eval),
        },
    )
    scratch = tempfile.TemporaryDirectory(prefix="hf_calib_sweep_") if output_dir is None else None
    root = Path(output_dir if output_dir is not None else scratch.name)
    bar = tqdm(total=len(n_values) + 1, desc="specialization sweep", disable=not settings.show_progress)
    try:
        set_seed(settings.seed)
        model = model_loader()
        base = SpecializationPoint("base", None, _evaluate(model, tokenizer, data, template, settings, judge, mc_eval))
        report.points.append(base)
        bar.update()
        for i, n in enumerate(n_values):
            bar.set_postfix_str(f"n={n}")
            if i > 0:
                set_seed(settings.seed)
                model = model_loader()
            set_seed(settings.seed)
            point, before = _train_and_evaluate(
                model, tokenizer, data, template, settings, sft, general, held_out, target, n, root, adapter_dir,
                judge, mc_eval,
            )  # fmt: skip
            if i == 0:  # a fresh LoRA adapter (B = 0) computes the base model: its first evaluation is the base's
                base.metrics.update(before)
            report.points.append(point)
            del model
            bar.update()
    finally:
        bar.close()
        if scratch is not None:
            scratch.cleanup()
    return report
