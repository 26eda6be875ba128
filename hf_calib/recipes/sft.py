"""LoRA fine-tuning of a causal LM on chat turns through ``CalibratedTrainer`` (fused label smoothing)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForSeq2Seq, TrainingArguments

from ..data import IGNORE_INDEX, tokenize_chat_completion
from ..loss import TokenCalibrationConfig
from ..trainer import CalibratedTrainer

#: Token-level calibration keys CalibratedTrainer adds to evaluate()'s metrics.
TOKEN_KEYS = ("loss", "token_ece", "token_nll", "token_accuracy", "token_mean_confidence")


@dataclass
class SFTSettings:
    """Knobs of :func:`finetune_chat_lora`. ``label_smoothing`` is epsilon (0 = plain cross-entropy)."""

    label_smoothing: float = 0.1
    max_length: int = 128
    batch_size: int = 8
    learning_rate: float = 2e-4
    epochs: float = 1.0
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    show_progress: bool = True
    #: Held-out evaluations spread evenly over training (every ``ceil(steps / (evaluations + 1))`` steps; Trainer
    #: also evaluates the last step), besides the one before training; 0: before and after training only.
    evaluations: int = 0
    #: Write a reliability diagram PNG under ``output_dir/calibration/`` at each evaluation.
    reliability_diagrams: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.reliability_diagrams, bool):
            raise ValueError(f"reliability_diagrams must be True or False; got {self.reliability_diagrams!r}.")
        if not isinstance(self.evaluations, int) or self.evaluations < 0:
            raise ValueError(f"evaluations must be a non-negative integer; got {self.evaluations!r}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}.")
        for name in ("max_length", "batch_size", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)}.")
        if not self.epochs > 0 or not self.learning_rate > 0:
            raise ValueError("epochs and learning_rate must be positive.")


@dataclass
class SFTOutcome:
    """The trained (PEFT) model, evaluate() metrics before and after, the loss curve and the time of ``train()``
    (periodic evaluations included).

    ``log_history`` is Trainer's ``state.log_history`` (training logs with ``loss`` and the training tokens'
    ``token_*`` calibration, evaluations with ``eval_*``), preceded by the evaluation before training (step 0).
    """

    model: Any
    before: dict[str, float]
    after: dict[str, float]
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    fused: bool = False
    log_history: list[dict[str, Any]] = field(default_factory=list)


def tokenize_turns(turns: Any, tokenizer: Any, max_length: int) -> Any:
    """Tokenize a ``messages`` dataset with completion-only labels; drop rows with no supervised token."""
    data = turns.map(
        lambda ex: tokenize_chat_completion(ex["messages"], tokenizer, max_length),
        remove_columns=turns.column_names,
        desc="tokenizing",
    )
    return data.filter(lambda ex: any(t != IGNORE_INDEX for t in ex["labels"]), desc="dropping prompt-only rows")


def sharegpt_splits(tokenizer: Any, turns: int, held_out: int, max_length: int, seed: int) -> tuple[Any, Any]:
    """``(train, held_out)`` tokenized rows from the first ``turns + held_out`` offline ShareGPT turns.

    Turns longer than ``16 * max_length`` characters are skipped; the held-out rows are drawn with ``seed``.
    """
    from ..assets import load_sharegpt_turns

    data = tokenize_turns(load_sharegpt_turns(limit=turns + held_out, max_chars=16 * max_length), tokenizer, max_length)
    if len(data) <= held_out:
        raise ValueError(f"only {len(data)} usable turns; lower the held-out count or raise the training turns.")
    split = data.train_test_split(test_size=held_out, seed=seed)
    return split["train"], split["test"]


DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_chat_dataset(path: str | Path, flag: str = "--dataset") -> Any:
    """A local chat dataset as rows of ``messages``: a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or a
    folder saved with ``datasets.Dataset.save_to_disk``, in chat form (a ``messages`` column of
    ``[{"role", "content"}, ...]`` ending with the assistant's turn) or prompt/completion form (``prompt`` and
    ``completion`` columns of text, or of messages as TRL's conversational prompt/completion)."""
    import datasets

    path = Path(path).expanduser()
    if path.is_dir():
        try:
            data = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"{flag} {str(path)!r} is a folder but not a saved datasets folder ({exc}).") from None
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise ValueError(f"{flag} {str(path)!r} holds splits {list(data)} and no 'train' split.")
            data = data["train"]
    elif path.is_file():
        kind = DATA_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise ValueError(
                f"{flag} {str(path)!r}: unknown file type {path.suffix!r}; use one of {sorted(DATA_SUFFIXES)} "
                "or a saved datasets folder."
            )
        data = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        raise ValueError(f"{flag} {str(path)!r} does not exist; pass a local data file or a saved datasets folder.")
    columns = set(data.column_names)
    if "messages" in columns:
        return data.select_columns(["messages"])
    if {"prompt", "completion"} <= columns:
        return data.map(_prompt_completion_to_messages, remove_columns=data.column_names, desc="to messages")
    raise ValueError(
        f"{flag} {str(path)!r} has columns {sorted(columns)}; expected 'messages' (chat) or 'prompt' and 'completion'."
    )


def _prompt_completion_to_messages(row: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = row["prompt"], row["completion"]
    # Text (a CSV cell may parse as a number) or, in TRL's conversational form, lists of messages.
    prompt = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    completion = (
        list(completion) if isinstance(completion, list) else [{"role": "assistant", "content": str(completion)}]
    )
    return {"messages": prompt + completion}


def chat_splits(data: Any, tokenizer: Any, max_length: int, rows: int, held_out: int, seed: int) -> tuple[Any, Any]:
    """``(train, held_out)`` tokenized rows from the first ``rows + held_out`` chats of ``data``."""
    data = tokenize_turns(data.select(range(min(len(data), rows + held_out))), tokenizer, max_length)
    if len(data) <= held_out:
        raise ValueError(f"only {len(data)} usable chats; lower the held-out count or add data.")
    split = data.train_test_split(test_size=held_out, seed=seed)
    return split["train"], split["test"]


def _training_arguments(
    settings: SFTSettings, steps: int, output_dir: str | Path, *, use_cpu: bool
) -> TrainingArguments:
    """The recipe's own ``TrainingArguments`` (when the caller gives none): cosine schedule, about 8 logs, and
    ``settings.evaluations`` held-out evaluations spread over the ``steps``."""
    evaluation: dict[str, Any] = {}
    if settings.evaluations:
        evaluation = {"eval_strategy": "steps", "eval_steps": math.ceil(steps / (settings.evaluations + 1))}
    return TrainingArguments(
        output_dir=str(output_dir),
        label_smoothing_factor=settings.label_smoothing,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(2, steps - 1),
        logging_steps=max(1, steps // 8),
        save_strategy="no",
        report_to=[],
        use_cpu=use_cpu,
        seed=settings.seed,
        disable_tqdm=not settings.show_progress,
        **evaluation,
    )


def finetune_chat_lora(
    model: torch.nn.Module,
    tokenizer: Any,
    train: Any,
    held_out: Any,
    settings: SFTSettings,
    *,
    output_dir: str | Path,
    training_args: TrainingArguments | None = None,
) -> SFTOutcome:
    """Wrap ``model`` with LoRA and fine-tune it on tokenized ``train`` rows; evaluate ``held_out`` before and after.

    The loss is label-smoothed cross-entropy with ``settings.label_smoothing`` through
    :class:`~hf_calib.CalibratedTrainer` (fused: no ``[tokens, vocab]`` logits), and each evaluation
    reports token-level calibration (``eval_token_ece`` ...). Nothing is saved to ``output_dir`` but
    Trainer's scratch files.

    ``training_args`` (e.g. :class:`~hf_calib.CalibratedTrainingArguments` from ``hf-calib sft``) replaces the
    arguments built from ``settings`` (its ``output_dir`` is replaced by ``output_dir``); the LoRA settings
    still come from ``settings``.
    """
    from peft import LoraConfig, get_peft_model

    if len(train) < settings.batch_size:
        raise ValueError(f"train has {len(train)} rows, fewer than batch_size={settings.batch_size}; add data.")
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=2 * settings.lora_r,
        target_modules=list(settings.lora_targets),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    steps = math.ceil(settings.epochs * len(train) / settings.batch_size)
    args = _training_arguments(settings, steps, output_dir, use_cpu=next(model.parameters()).device.type == "cpu")
    calibration: dict[str, Any] = {
        "calibration_metrics": TokenCalibrationConfig(reliability_diagram=settings.reliability_diagrams)
    }
    if training_args is not None:  # its own calibration settings
        args, calibration = dataclasses.replace(training_args, output_dir=str(output_dir)), {}
    trainer = CalibratedTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        **calibration,
    )
    _log_into_output_dir(trainer)
    before = trainer.evaluate()
    history = [*trainer.state.log_history]  # train() starts a new state: keep the evaluation before it
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    after = _final_evaluation(trainer)
    history += trainer.state.log_history
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    return SFTOutcome(
        model=model,
        before=_strip(before),
        after=_strip(after),
        losses=losses,
        seconds=seconds,
        steps=trainer.state.global_step,
        fused=bool(trainer.fused_loss_active),
        log_history=history,
    )


def _final_evaluation(trainer: CalibratedTrainer) -> dict[str, float]:
    """The held-out metrics of the trained weights: those of the evaluation Trainer ran at the last step (under
    a step or epoch evaluation strategy, unless it then loaded the best checkpoint), else a new ``evaluate()``."""
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    last_step = evaluations and evaluations[-1].get("step") == trainer.state.global_step
    if last_step and not trainer.args.load_best_model_at_end:
        return evaluations[-1]
    return trainer.evaluate()


def _log_into_output_dir(trainer: CalibratedTrainer) -> None:
    """TensorBoard logs go under ``output_dir`` also for the evaluation before training: transformers' callback
    picks its folder at ``on_train_begin`` and otherwise writes an earlier evaluation to ``./runs``."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(Path(trainer.args.output_dir) / "runs")


def _strip(metrics: dict[str, float]) -> dict[str, float]:
    return {key: metrics[f"eval_{key}"] for key in TOKEN_KEYS if f"eval_{key}" in metrics}
