"""Thermometer on MMLU subjects: per-subject features and answer scores, training, held-out evaluation.

``hf-calib thermometer`` trains on the training subjects, reports the held-out subjects (leave one
subject out: each held-out subject is scored by a Thermometer trained on every other subject) and
saves a Thermometer trained on all training subjects.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..eval import MultipleChoiceCalibration, task_key
from ..eval.multiple_choice import MultipleChoiceDetails
from ..eval.prompts import letter_token_ids
from ..scaling import ThermometerConfig, ThermometerTask, leave_one_task_out, train_thermometer
from ..scaling.features import cached_tensors, extract_features, extract_features_and_logits, model_cache_key
from .common import format_table, staged_dir, torch_threads

#: Metrics shown by the held-out table, in order.
SHOWN = ("accuracy", "temperature", "ece", "mce", "tl_ece", "nll", "brier")


def subject_task(
    model: torch.nn.Module,
    tokenizer: Any,
    subject: str,
    *,
    limit: int,
    scoring: str = "cloze",
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
    scores: MultipleChoiceDetails | None = None,
    show_progress: bool = True,
) -> ThermometerTask:
    """Features, answer scores and labels of one MMLU subject's first ``limit`` questions.

    Letter scoring reads the features and the letters' logits from the same forward; cloze scoring
    adds one forward per option (or reuses ``scores`` from an evaluation of the same questions).
    With ``cache_dir``, features and scores are stored as safetensors keyed by the model's weights.
    """
    mc = MultipleChoiceCalibration.from_mmlu(
        subject, limit, scoring=scoring, batch_size=batch_size, show_progress=show_progress
    )
    labels = torch.tensor([q.answer for q in mc.questions])
    key = f"mmlu-{scoring}-{task_key(subject)}-{limit}"
    prompts = mc.prompts(tokenizer)
    options: dict[str, Any] = dict(batch_size=batch_size, show_progress=show_progress)
    if cache_dir is not None:
        options.update(cache_dir=cache_dir, cache_key=key)
    if scoring == "letter":
        width = max(len(q.choices) for q in mc.questions)
        token_ids, _ = letter_token_ids(tokenizer, "ABCDEFGHIJ"[:width], "auto")
        out = extract_features_and_logits(model, tokenizer, prompts, token_ids, **options)
        return ThermometerTask(subject, out["features"], out["logits"], labels)
    features = extract_features(model, tokenizer, prompts, **options)
    if scores is not None:
        return ThermometerTask(subject, features, scores.logits, scores.labels)

    def compute() -> dict[str, torch.Tensor]:
        return {"logits": mc.evaluate(model, tokenizer, return_details=True)[1].logits}

    if cache_dir is None:
        return ThermometerTask(subject, features, compute()["logits"], labels)
    path = Path(cache_dir) / model_cache_key(model) / f"{key}-scores.safetensors"
    digest = hashlib.sha256(json.dumps([prompts, [q.choices for q in mc.questions]]).encode()).hexdigest()
    return ThermometerTask(subject, features, cached_tensors(path, digest, compute)["logits"], labels)


def split_details(details: MultipleChoiceDetails) -> dict[str, MultipleChoiceDetails]:
    """One :class:`MultipleChoiceDetails` per task of a multi-subject evaluation."""
    out = {}
    for t, task in enumerate(details.tasks):
        rows = details.task_ids == t
        width = int(torch.isfinite(details.logits[rows]).sum(-1).max())
        out[task] = MultipleChoiceDetails(
            logits=details.logits[rows, :width],
            labels=details.labels[rows],
            task_ids=torch.zeros(int(rows.sum()), dtype=torch.long),
            tasks=[task],
            indices=details.indices[rows],
            scoring=details.scoring,
        )
    return out


def join_tasks(tasks: Sequence[ThermometerTask], scoring: str) -> MultipleChoiceDetails:
    """The option scores of several subject tasks as one multi-task :class:`MultipleChoiceDetails`."""
    width = max(t.logits.shape[1] for t in tasks)
    logits = torch.full((sum(len(t.labels) for t in tasks), width), -torch.inf)
    row = 0
    for task in tasks:
        logits[row : row + len(task.labels), : task.logits.shape[1]] = task.logits
        row += len(task.labels)
    return MultipleChoiceDetails(
        logits=logits,
        labels=torch.cat([t.labels for t in tasks]),
        task_ids=torch.cat([torch.full((len(t.labels),), i, dtype=torch.long) for i, t in enumerate(tasks)]),
        tasks=[t.name for t in tasks],
        indices=torch.cat([torch.arange(len(t.labels)) for t in tasks]),
        scoring=scoring,
    )


def held_out_rows(result: Any, held_out: Sequence[str]) -> list[dict[str, Any]]:
    """Rows ``{subject, method, metric...}`` of a leave-one-out result for the held-out subjects, plus the mean."""
    per_task = result.per_task()
    rows = []
    for subject in held_out:
        for method, values in per_task[subject].items():
            rows.append({"subject": subject, "method": method, **{m: values.get(m) for m in SHOWN}})
    for method, values in result.mean().items():
        rows.append({"subject": "mean", "method": method, **{m: values.get(m) for m in SHOWN}})
    return rows


def cli(args: argparse.Namespace) -> int:
    from .mc_cli import load_with_adapter

    # recipes.run checked the arguments and filled in the subjects: canonical MMLU names, held-out ones last.
    subjects, held_out = list(args.subjects), list(args.held_out)
    torch.manual_seed(args.seed)
    model, tokenizer = load_with_adapter(args.model, args.adapter, args.device)
    tasks = [subject_task(model, tokenizer, s, limit=args.limit, scoring=args.scoring) for s in subjects]
    overrides = {} if args.steps is None else {"steps": args.steps}
    config = ThermometerConfig(input_size=tasks[0].features.shape[1], seed=args.seed, **overrides)
    training = [t for t in tasks if t.name not in held_out]
    with torch_threads(1):
        result = leave_one_task_out(tasks, config, seeds=[args.seed], held_out=held_out)
        thermometer, history = train_thermometer(training, config)
    with staged_dir(args.output_dir) as out:
        thermometer.save_pretrained(out / "thermometer", model=model)
        (out / "leave_one_out.json").write_text(json.dumps({"rows": result.rows, "mean": result.mean()}, indent=2))
    print(f"\n{args.scoring} scoring, {len(training)} training subjects x {args.limit} questions; held out:")
    print(format_table(held_out_rows(result, held_out)))
    print(f"Thermometer (best step {history.best_step}) saved to {args.output_dir / 'thermometer'}")
    return 0
