"""The model card of a calibrated adapter bundle, built with huggingface_hub's ``ModelCard`` / ``ModelCardData``.

The YAML metadata carries the base model, the training datasets, ``library_name: peft`` (so the Hub and PEFT
tooling still treat the repository as an adapter) and the calibration metrics as model-index ``eval_results``
(huggingface_hub's ``EvalResult``). The text explains what is in the bundle, how to load it, the metrics before
and after calibration, and embeds ``reliability_diagram.png``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..calibrators import Calibrator
from ..metrics import headline_metrics
from .report import CalibrationReport

DIAGRAM_FILE = "reliability_diagram.png"

_PIPELINES = {"causal_lm": "text-generation", "sequence_classification": "text-classification"}
_PEFT_NAMES = {"LORA": "LoRA", "ADALORA": "AdaLoRA", "IA3": "(IA)³", "LOHA": "LoHa", "LOKR": "LoKr", "DORA": "DoRA"}
# A Hub repository id (``name`` or ``owner/name``), which the card may link to; local paths are not linked.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
#: What the usage example loads when the card is written without a repository id (a local save).
LOCAL_PLACEHOLDER = "path/to/this/folder"
_LOAD_LINE = 'model = CalibratedAdapter.from_pretrained("{}", base_model=base)'
_LOAD_RE = re.compile(
    r'^model = CalibratedAdapter\.from_pretrained\("([^"\r\n]*)", base_model=base\)(?=\r?$)', re.MULTILINE
)


@dataclass
class CardInfo:
    """What the model card says beyond what the bundle knows by itself.

    Attributes:
        base_model: Hub id of the base model (default: the base model's ``config._name_or_path``).
        datasets: Hub ids (or names) of the training datasets.
        training: training settings shown in a table (learning rate, epochs, LoRA rank, ...).
        model_name: the title of the card and the model-index name (default: the repository or folder name).
        eval_dataset: Hub id (or name) of the dataset the calibration report was measured on, for the
            model-index ``dataset`` fields, when the report names none (default: the training dataset when
            ``datasets`` has exactly one entry).
        license, language: card metadata (Hub identifiers, e.g. ``"apache-2.0"``, ``"en"``).
        tags: extra tags; ``hf-calib``, ``calibration`` and the PEFT tags are always added.
        description: a paragraph shown under the title.
    """

    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    model_name: str | None = None
    license: str | None = None
    language: str | list[str] | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    eval_dataset: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if isinstance(self.tags, str):
            self.tags = [self.tags]
        if self.eval_dataset is not None and not isinstance(self.eval_dataset, str):
            raise TypeError(f"eval_dataset must be a dataset id (str) or None; got {type(self.eval_dataset).__name__}.")
        if not isinstance(self.training, dict):
            raise TypeError(f"training must be a dict of setting name to value; got {type(self.training).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "datasets": list(self.datasets),
            "training": dict(self.training),
            "model_name": self.model_name,
            "license": self.license,
            "language": self.language,
            "tags": list(self.tags),
            "description": self.description,
            "eval_dataset": self.eval_dataset,
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any]) -> CardInfo:
        # Manifests written before a field existed lack it (its default applies); unknown keys are ignored.
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in (content or {}).items() if key in known})

    def evaluation_dataset(self, report: CalibrationReport | None) -> str | None:
        """Where the report was measured: the report's dataset, else :attr:`eval_dataset`, else the single
        training dataset; None when unknown."""
        if report is not None and report.dataset:
            return report.dataset
        if self.eval_dataset:
            return self.eval_dataset
        return self.datasets[0] if len(self.datasets) == 1 else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in sorted(value, key=str))
    return str(value)


def _eval_results(report: CalibrationReport, task: str, dataset: str | None) -> list[EvalResult]:
    """The report's headline metrics as model-index results; ``dataset`` is :meth:`CardInfo.evaluation_dataset`
    (the Hub requires a dataset name and type: an unknown one is named ``custom``)."""
    split = report.split
    suffix = f"{report.level}-level, after calibration" if report.temperature is not None else f"{report.level}-level"
    names = {
        "ece": f"ECE ({report.n_bins} equal-width bins, {suffix})",
        "brier": f"Brier score ({suffix})",
        "nll": f"NLL ({suffix})",
        "misclassification_auroc": "Misclassification AUROC ("
        + ("AdUE" if report.uncertainty == "adue" else "max prob")
        + ")",
        "accuracy": f"Accuracy ({report.level}-level)",
    }
    labels = headline_metrics()
    return [
        EvalResult(
            task_type=_PIPELINES.get(task, "text-generation"),
            dataset_type=dataset or "custom",
            dataset_name=dataset or "held-out calibration set",
            dataset_split=split,
            metric_type=key,
            metric_value=round(value, 6),
            metric_name=names.get(key, f"{labels[key]} ({suffix})"),
        )
        for key, value in report.headline().items()
    ]


def _metrics_table(report: CalibrationReport) -> list[str]:
    columns = (
        ["Metric", "Before calibration (T = 1)", "After calibration"] if report.uncalibrated else ["Metric", "Value"]
    )
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, label in headline_metrics().items():
        if key not in report.metrics:
            continue
        row = [label]
        if report.uncalibrated:
            row.append(_fmt(report.uncalibrated[key]) if key in report.uncalibrated else "—")
        row.append(_fmt(report.metrics[key]))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _card_data(info: CardInfo, task: str, model_name: str, adapter: dict[str, Any], report: CalibrationReport | None):
    """The card's YAML metadata (what the Hub indexes)."""
    peft_type = str(adapter.get("peft_type", "LORA")).lower()
    tags = ["hf-calib", "calibration", "peft", peft_type] + [t for t in info.tags if t]
    if info.base_model:
        tags.append(f"base_model:adapter:{info.base_model}")
    return ModelCardData(
        base_model=info.base_model,
        datasets=list(info.datasets) or None,
        language=info.language,
        license=info.license,
        library_name="peft",
        pipeline_tag=_PIPELINES.get(task),
        tags=list(dict.fromkeys(tags)),
        model_name=model_name,
        eval_results=(
            _eval_results(report, task, info.evaluation_dataset(report)) if report and report.headline() else None
        ),
        metrics=[key for key in headline_metrics() if report and key in report.metrics] or None,
    )


def _files_section(calibrators: Sequence[Calibrator], diagram: bool) -> list[str]:
    lines = [
        "## What is in this repository",
        "",
        "| File | Content |",
        "|---|---|",
        "| `adapter_config.json`, `adapter_model.safetensors` | the PEFT adapter (loads with PEFT alone) |",
        "| `calibration.json` | manifest: base-model fingerprint, label smoothing, components, metrics |",
    ]
    for calibrator in calibrators:
        for files, what in calibrator.card_files():
            names = (files,) if isinstance(files, str) else files
            lines.append(f"| {', '.join(f'`{name}`' for name in names)} | {what} |")
    if diagram:
        lines.append(f"| `{DIAGRAM_FILE}` | reliability diagram of the calibrated probabilities |")
    return lines + [""]


def _usage_section(task: str, base_id: str, load_id: str, added: dict[str, str]) -> list[str]:
    auto = "AutoModelForCausalLM" if task == "causal_lm" else "AutoModelForSequenceClassification"
    return [
        "## How to use",
        "",
        "With `pip install hf-calib`:",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "from hf_calib.hub import CalibratedAdapter",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{base_id}")',
        f'base = {auto}.from_pretrained("{base_id}")',
        _LOAD_LINE.format(load_id),
        'inputs = tokenizer(["An example input."], return_tensors="pt")',
        "outputs = model(**inputs)",
        "outputs.calibrated_probs  # softmax(logits / T)"
        + "".join(f"\noutputs.{name}  # {text}" for name, text in added.items()),
        "```",
        "",
        "Loading verifies the SHA-256 of every file listed in `calibration.json`, refuses non-finite weights, and "
        "checks the base model against the recorded fingerprint (architecture, every shape-defining config field "
        "and a sample of the base weights), reading only JSON and safetensors files. The adapter alone also "
        "loads with `peft.PeftModel.from_pretrained(base, ...)`, without the calibration.",
        "",
    ]


def _calibration_section(
    calibrators: Sequence[Calibrator],
    label_smoothing: float | None,
    report: CalibrationReport | None,
    dataset: str | None,
    diagram: bool,
) -> list[str]:
    scaled = any(c.sets_temperature for c in calibrators)
    lines = ["## Calibration", ""]
    for calibrator in calibrators:
        lines += calibrator.card_notes()
    if label_smoothing:
        lines.append(f"- **Label smoothing during fine-tuning**: epsilon = {label_smoothing:g}.")
    elif label_smoothing is not None:
        lines.append("- **Label smoothing during fine-tuning**: none (epsilon = 0).")
    if not scaled:
        lines.append("- No post-hoc scaling: probabilities are the model's own softmax.")
    lines.append("")
    if report is not None:
        where = dataset or "a held-out set"
        if report.split:
            where += f" ({report.split} split)"
        n = report.metrics.get("n_samples")
        lines += [
            f"Measured on {where}" + (f", {int(n)} {report.level}-level predictions" if n else "") + ": top-1 "
            f"confidence against correctness, ECE with {report.n_bins} equal-width bins, multiclass Brier score, "
            "NLL of the true class, and the AUROC of "
            + ("the AdUE uncertainty" if report.uncertainty == "adue" else "`1 - max probability`")
            + " for detecting wrong predictions (higher is better; the others: lower is better).",
            "",
            *_metrics_table(report),
            "",
        ]
        if report.temperature is None and scaled:
            lines += ["These metrics were measured without post-hoc scaling (T = 1).", ""]
    if diagram:
        lines += [
            "![Reliability diagram: accuracy against confidence per bin](" + DIAGRAM_FILE + ")",
            "",
            "Bars: accuracy per confidence bin; red: the gap to the diagonal of perfect calibration; "
            "bottom: samples per bin.",
            "",
        ]
    return lines


def _training_section(info: CardInfo, method: str, adapter: dict[str, Any], label_smoothing: float | None) -> list[str]:
    settings = {
        "PEFT method": method,
        "LoRA rank (r)": adapter.get("r"),
        "LoRA alpha": adapter.get("lora_alpha"),
        "Target modules": adapter.get("target_modules"),
        "Label smoothing": label_smoothing,
        **info.training,
    }
    settings = {key: value for key, value in settings.items() if value is not None}
    if not (settings or info.datasets):
        return []
    lines = ["## Training", ""]
    if info.datasets:
        lines += ["Datasets: " + ", ".join(f"`{name}`" for name in info.datasets), ""]
    if settings:
        lines += ["| Setting | Value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in settings.items()]
        lines.append("")
    return lines


def build_model_card(
    *,
    info: CardInfo,
    task: str,
    repo_id: str | None,
    adapter: dict[str, Any],
    label_smoothing: float | None,
    calibrators: Sequence[Calibrator],
    report: CalibrationReport | None,
    diagram: bool,
) -> ModelCard:
    """Build the card of a bundle (see the module docstring); ``adapter`` is the PEFT ``adapter_config.json``.

    Each calibrator contributes its rows of the file table, its notes under "Calibration" and the outputs it
    adds (:class:`hf_calib.calibrators.Calibrator`).
    """
    added = {name: text for c in calibrators for name, text in c.added_outputs.items()}
    model_name = info.model_name or _default_name(repo_id)
    data = _card_data(info, task, model_name, adapter, report)
    base_id = info.base_model or "<base model id>"
    base_ref = f"[`{base_id}`](https://huggingface.co/{base_id})" if _HUB_ID.fullmatch(base_id) else f"`{base_id}`"
    method = _PEFT_NAMES.get(str(adapter.get("peft_type")), str(adapter.get("peft_type", "PEFT")))
    lines = [f"# {model_name}", ""]
    if info.description:
        lines += [info.description, ""]
    lines += [
        f"A {method} adapter for {base_ref}, packaged by hf_calib with what calibrates it: the model's outputs "
        "carry calibrated "
        + ("next-token probabilities" if task == "causal_lm" else "class probabilities")
        + "".join(f" and a per-example {name}" for name in added)
        + ".",
        "",
        *_files_section(calibrators, diagram),
        *_usage_section(task, base_id, repo_id or LOCAL_PLACEHOLDER, added),
        *_calibration_section(calibrators, label_smoothing, report, info.evaluation_dataset(report), diagram),
        *_training_section(info, method, adapter, label_smoothing),
        "## Limitations",
        "",
        "Calibration is measured on, and holds for, data like the calibration set; under distribution shift the "
        "probabilities may again be over- or under-confident. Re-measure on your own data.",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _default_name(repo_id: str | None) -> str:
    """The card's title and model-index name when :attr:`CardInfo.model_name` is not set."""
    return repo_id.split("/")[-1] if repo_id else "calibrated-adapter"


def card_for_repo(text: str, repo_id: str, *, model_name: str | None = None) -> str | None:
    """The card ``text`` written by :func:`build_model_card` for another repository (or a local folder), for
    ``repo_id``: exactly what :func:`build_model_card` writes with ``repo_id`` for the same bundle.

    Only what depends on the repository changes: the usage example loads ``repo_id`` and, unless
    ``model_name`` (the bundle's :attr:`CardInfo.model_name`) was set, the title and the model-index name become
    the repository's name; the rest of the card, hand edits included, is kept. Returns None when ``text`` holds
    no (or more than one) hf_calib usage example; raises ``ValueError`` when its metadata does not parse.
    """
    card = ModelCard(text)
    found = _LOAD_RE.findall(card.text)
    if len(found) != 1:
        return None
    old_name = model_name or _default_name(None if found[0] == LOCAL_PLACEHOLDER else found[0])
    new_name = model_name or _default_name(repo_id)
    body = _LOAD_RE.sub(lambda _: _LOAD_LINE.format(repo_id), card.text)
    for newline in ("\n", "\r\n"):
        title = f"{newline}# {old_name}{newline}"
        if body.startswith(title):
            body = f"{newline}# {new_name}{newline}" + body[len(title) :]
    if card.data.model_name == old_name:
        card.data.model_name = new_name
    card.text = body
    return card.content
