"""Using a temperature at inference: a scaled-model wrapper, a logits processor, and the free-form QA recipe.

* :class:`TemperatureScaledLM` wraps a causal LM so that ``outputs.logits`` are ``logits / T``; any code
  that softmaxes the model's logits (e.g. :class:`hf_calib.eval.MultipleChoiceCalibration`) then sees
  calibrated probabilities, and the argmax (the answer) is unchanged.
* :class:`TemperatureLogitsProcessor` divides the next-token scores by ``T`` inside ``generate()``.
* :func:`thermometer_temperature` predicts a task's ``T`` from its unlabelled prompts.
* Free-form answers (Thermometer's MRQA recipe): :func:`generate_answers` greedily, label an answer
  correct when ROUGE-L against the gold answer is > 0 (:func:`rouge_l_correct`), then calibrate the
  two option logits of :func:`verification_prompt` read by :func:`score_yes_no` (option A = "Yes").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._fingerprint import check_fingerprint
from .._model_utils import base_model, eval_mode, greedy_generate, input_device, pad_token_id
from .._text_metrics import rouge_l_f1
from ..eval.prompts import letter_token_ids
from ..eval.scoring import score_letters
from ._checks import check_temperature
from .features import encode_prompts, extract_features
from .temperature import TemperatureScaler
from .thermometer import Thermometer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover - transformers is a hard dependency of hf_calib
    LogitsProcessor = object  # type: ignore[assignment,misc]


def _temperature_of(temperature: float | TemperatureScaler) -> float:
    if isinstance(temperature, TemperatureScaler):
        return temperature.temperature
    return check_temperature(temperature)


class TemperatureLogitsProcessor(LogitsProcessor):
    """``scores / T`` for ``model.generate(..., logits_processor=LogitsProcessorList([...]))``.

    Unlike the ``temperature`` argument of ``generate`` it also applies under greedy decoding, so
    ``output_scores=True`` returns calibrated next-token scores.
    """

    def __init__(self, temperature: float | TemperatureScaler) -> None:
        self.temperature = _temperature_of(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TemperatureScaledLM(nn.Module):
    """A causal LM whose ``forward`` returns ``logits / T`` (everything else as the wrapped model's).

    Args:
        model: a transformers causal LM (plain or PEFT).
        temperature: ``T > 0``, or a fitted :class:`TemperatureScaler`.
    """

    def __init__(self, model: nn.Module, temperature: float | TemperatureScaler) -> None:
        super().__init__()
        self.model = model
        self.temperature = _temperature_of(temperature)

    @property
    def config(self) -> Any:
        return self.model.config

    def get_base_model(self) -> nn.Module:
        """The wrapped transformers model (its ``forward`` signature tells callers which inputs it takes)."""
        return base_model(self.model)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self.model(*args, **kwargs)
        outputs.logits = outputs.logits / self.temperature
        return outputs


def thermometer_temperature(
    thermometer: Thermometer,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_key: str | None = None,
    show_progress: bool = True,
) -> float:
    """The temperature Thermometer predicts for a task from its unlabelled ``prompts``: ``1 / mean beta``.

    Refuses a model other than the one whose fingerprint the Thermometer was saved with.
    """
    check_fingerprint(thermometer.model_fingerprint, model, what="This Thermometer")
    features = extract_features(
        model,
        tokenizer,
        prompts,
        batch_size=batch_size,
        cache_dir=cache_dir,
        cache_key=cache_key,
        show_progress=show_progress,
    )
    return thermometer.predict_temperature(features)


def verification_prompt(question: str, answer: str) -> str:
    """``"{question}\\nAnswer: {answer}\\nIs the above answer correct?\\nA. Yes\\nB. No\\nAnswer:"``.

    Thermometer's free-form recipe turns a generated answer into a two-option question; the option
    logits of ``" A"`` / ``" B"`` after it (:func:`score_yes_no`) are then calibrated like any
    multiple-choice logits, and ``p(A)`` is the confidence that the answer is correct.
    """
    if not isinstance(question, str) or not isinstance(answer, str):
        raise TypeError("question and answer must be strings.")
    return f"{question.strip()}\nAnswer: {answer.strip()}\nIs the above answer correct?\nA. Yes\nB. No\nAnswer:"


def score_yes_no(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    show_progress: bool = True,
) -> torch.Tensor:
    """Next-token logits of the letters A ("Yes") and B ("No") after each prompt, float32 [N, 2]."""
    ids, _ = letter_token_ids(tokenizer, "AB", "auto")
    encoded = encode_prompts(tokenizer, prompts)
    pad_id = pad_token_id(tokenizer)
    with torch.no_grad(), eval_mode(model):
        return score_letters(model, encoded, ids, pad_id=pad_id, batch_size=batch_size, show_progress=show_progress)


def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    show_progress: bool = True,
) -> list[str]:
    """Greedy answers to the prompts, cut at the first newline (left padding; one batch at a time)."""
    encoded = encode_prompts(tokenizer, prompts)
    pad_id = pad_token_id(tokenizer)
    device = input_device(model)
    answers: list[str] = [""] * len(encoded)
    starts = range(0, len(encoded), batch_size)
    with torch.no_grad(), eval_mode(model):
        for start in tqdm(starts, desc="Generating", disable=not show_progress):
            batch = encoded[start : start + batch_size]
            new_tokens = greedy_generate(model, batch, pad_id=pad_id, max_new_tokens=max_new_tokens, device=device)
            for row, text in enumerate(tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[start + row] = text.strip().split("\n")[0].strip()
    return answers


def rouge_l_correct(prediction: str, reference: str) -> bool:
    """Thermometer's free-form label: ROUGE-L F-measure of ``prediction`` vs ``reference`` is > 0."""
    return rouge_l_f1([prediction], [reference], use_stemmer=False)[0] > 0
