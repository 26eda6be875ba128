"""Everything hf_calib adds to training, as ``TrainingArguments`` fields.

:class:`CalibrationArguments` holds the settings; :class:`CalibratedTrainingArguments` is
``transformers.TrainingArguments`` with them (TRL's twin, ``CalibratedSFTConfig``, lives in
:mod:`hf_calib.trainer.sft`). Being fields of the run's arguments, they are saved and logged with the run
(``trainer.args.to_dict()``, every ``report_to`` integration's config), and they come from YAML, JSON or the
command line through ``transformers.HfArgumentParser`` like every Trainer flag::

    parser = HfArgumentParser(CalibratedTrainingArguments)
    (args,) = parser.parse_yaml_file("run.yaml")
    trainer = CalibratedTrainer(model=model, args=args, ...)

The trainers read them when the matching keyword argument (``calibration_metrics=``, ``multiple_choice=``,
``calibrated_adapter=``) is not given; a keyword argument always wins.

Multiple-choice evaluation sets are given by spec, a string ``BENCHMARK[:SUBJECT,SUBJECT...][:key=value...]``
with keys ``limit`` (questions per subject), ``scoring`` (``letter`` or ``cloze``), ``fewshot`` and ``prefix``
(metric keys ``eval_{prefix}/...``), e.g. ``mmlu:marketing,nutrition:limit=50:scoring=cloze``; in YAML/JSON a
mapping with the same keys (``benchmark``, ``subjects``, ...) works too. ``mmlu`` (the offline MMLU test split)
is the benchmark available today.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..loss import TokenCalibrationConfig

__all__ = ["CalibratedTrainingArguments", "CalibrationArguments", "MultipleChoiceSpec"]

BENCHMARKS = ("mmlu",)
SCORINGS = ("letter", "cloze")


@dataclass(frozen=True)
class MultipleChoiceSpec:
    """One multiple-choice evaluation set (see the module docstring for the string form)."""

    benchmark: str = "mmlu"
    subjects: tuple[str, ...] = ()
    limit: int | None = None
    scoring: str = "letter"
    fewshot: int = 0
    prefix: str | None = None

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"multiple_choice: unknown benchmark {self.benchmark!r}; available: {list(BENCHMARKS)}.")
        if isinstance(self.subjects, str):
            object.__setattr__(self, "subjects", tuple(s for s in self.subjects.split(",") if s))
        object.__setattr__(self, "subjects", tuple(self.subjects))
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise ValueError(f"multiple_choice: limit must be a positive integer; got {self.limit!r}.")
        if self.scoring not in SCORINGS:
            raise ValueError(f"multiple_choice: scoring must be one of {list(SCORINGS)}; got {self.scoring!r}.")
        if isinstance(self.fewshot, bool) or not isinstance(self.fewshot, int) or self.fewshot < 0:
            raise ValueError(f"multiple_choice: fewshot must be a non-negative integer; got {self.fewshot!r}.")

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | MultipleChoiceSpec) -> MultipleChoiceSpec:
        """A spec from its string form, a mapping of its fields, or itself."""
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"multiple_choice: unknown keys {unknown} in {spec!r}.")
            return cls(**spec)
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"multiple_choice: expected a spec such as 'mmlu:marketing:limit=50'; got {spec!r}.")
        benchmark, *parts = spec.strip().split(":")
        values: dict[str, Any] = {"benchmark": benchmark}
        for part in parts:
            if "=" not in part:
                if "subjects" in values:
                    raise ValueError(f"multiple_choice: {spec!r} names subjects twice; separate subjects with ','.")
                values["subjects"] = part
                continue
            key, _, value = part.partition("=")
            if key in ("limit", "fewshot"):
                try:
                    values[key] = int(value)
                except ValueError:
                    raise ValueError(f"multiple_choice: {key} must be an integer in {spec!r}; got {value!r}.") from None
            elif key in ("scoring", "prefix", "subjects"):
                values[key] = value
            else:
                raise ValueError(
                    f"multiple_choice: unknown key {key!r} in {spec!r}; use limit, scoring, fewshot or prefix."
                )
        return cls(**values)

    def build(self, default_prefix: str) -> Any:
        """The :class:`~hf_calib.eval.MultipleChoiceCalibration` this spec describes."""
        from ..eval import MultipleChoiceCalibration

        return MultipleChoiceCalibration.from_mmlu(
            list(self.subjects) or None,
            self.limit,
            scoring=self.scoring,
            num_fewshot=self.fewshot,
            prefix=self.prefix or default_prefix,
        )


@dataclass
class CalibrationArguments:
    """hf_calib's training settings; mixed into :class:`CalibratedTrainingArguments` and ``CalibratedSFTConfig``."""

    calibration_metrics: bool = field(
        default=True,
        metadata={"help": "Report token-level calibration (eval_token_ece, eval_token_nll, ...) at each evaluation."},
    )
    train_token_calibration: bool = field(
        default=True,
        metadata={
            "help": "Log the calibration of the training tokens (token_ece, token_nll, token_accuracy, "
            "token_mean_confidence, token_entropy, ...) at every logging step, from the loss's own softmax."
        },
    )
    calibration_n_bins: int = field(
        default=15, metadata={"help": "Equal-width confidence bins of ECE / MCE and of the reliability diagrams."}
    )
    calibration_prefix: str = field(
        default="token_", metadata={"help": "Token calibration keys are {metric_key_prefix}_{prefix}ece etc."}
    )
    reliability_diagrams: bool = field(
        default=True,
        metadata={"help": "Write (and log to report_to) a reliability diagram of the tokens at each evaluation."},
    )
    multiple_choice: list[str] | None = field(
        default=None,
        metadata={
            "help": "Multiple-choice evaluation sets run at each evaluation, as specs "
            "'mmlu:SUBJECT,SUBJECT:limit=N:scoring=letter|cloze:fewshot=K:prefix=P'."
        },
    )
    push_calibrated_bundle: bool = field(
        default=True,
        metadata={"help": "Hub pushes of a PEFT model carry the calibrated bundle (calibration files and card)."},
    )
    card_datasets: list[str] | None = field(
        default=None, metadata={"help": "Datasets named on the calibrated bundle's model card."}
    )
    card_base_model: str | None = field(
        default=None, metadata={"help": "Base model Hub id on the card (default: the model's own name or path)."}
    )
    card_license: str | None = field(default=None, metadata={"help": "License identifier on the card."})
    card_language: str | None = field(default=None, metadata={"help": "Language identifier on the card."})

    def _check_calibration_arguments(self) -> None:
        # Values from YAML/JSON are not converted by the parser: validate them here, naming the field.
        for name in (
            "calibration_metrics",
            "train_token_calibration",
            "reliability_diagrams",
            "push_calibrated_bundle",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}.")
        try:
            self.token_calibration_config()
        except ValueError as err:
            raise ValueError(f"calibration_n_bins / calibration_prefix: {err}") from None
        if isinstance(self.multiple_choice, str | dict):
            self.multiple_choice = [self.multiple_choice]
        specs = self.multiple_choice_specs()
        prefixes = [spec.prefix for spec in specs if spec.prefix]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError(f"multiple_choice: each set needs its own prefix; got {prefixes}.")
        if isinstance(self.card_datasets, str):
            self.card_datasets = [self.card_datasets]

    def token_calibration_config(self) -> TokenCalibrationConfig | None:
        """The token calibration these arguments ask for (None when ``calibration_metrics`` is off)."""
        if not self.calibration_metrics:
            return None
        return TokenCalibrationConfig(
            n_bins=self.calibration_n_bins,
            prefix=self.calibration_prefix,
            reliability_diagram=self.reliability_diagrams,
        )

    def multiple_choice_specs(self) -> list[MultipleChoiceSpec]:
        return [MultipleChoiceSpec.parse(spec) for spec in self.multiple_choice or []]

    def multiple_choice_evaluators(self) -> list[Any]:
        """One :class:`~hf_calib.eval.MultipleChoiceCalibration` per spec (prefix ``mc``, ``mc2``, ... by default)."""
        return [spec.build("mc" if i == 0 else f"mc{i + 1}") for i, spec in enumerate(self.multiple_choice_specs())]


@dataclass
class CalibratedTrainingArguments(TrainingArguments, CalibrationArguments):
    """``transformers.TrainingArguments`` plus hf_calib's settings (:class:`CalibrationArguments`).

    Use it wherever ``TrainingArguments`` goes; ``CalibratedTrainer`` reads the extra fields, a plain ``Trainer``
    ignores them.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_calibration_arguments()


def calibration_settings(args: Any) -> CalibrationArguments | None:
    """``args`` when it carries hf_calib's settings (any :class:`CalibrationArguments`), else None."""
    return args if isinstance(args, CalibrationArguments) else None
