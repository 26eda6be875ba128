"""Evaluation of fine-tuned LMs: answer-level calibration on multiple-choice benchmarks, generation metrics.

``MultipleChoiceCalibration(data).evaluate(model, tokenizer)`` returns a flat ``dict[str, float]``
(``mc/{task}/{metric}``, ``mc/macro/{metric}``, ``mc/micro/{metric}``). Details: ``docs/multiple_choice.md``.

Generation and domain transfer (``docs/data_and_eval.md``): ``LLMJudge`` (response vs reference, 0-10),
``rouge_l`` / ``bleu``, ``domain_report`` (in-domain vs out-of-domain accuracy, or ROUGE-L and BLEU; mean and SE
over seeds), ``cross_task_report`` (train on task A, evaluate on A and B); generation metrics at
each evaluation: ``hf_calib.callbacks.GenerationEvalCallback``.
"""

from .agreement import AgreementResult, agreement
from .cross_task import CrossTaskModel, CrossTaskReport, EvalTask, cross_task_report, evaluate_cross_task
from .domain import DomainModel, DomainReport, domain_report, domain_scores, evaluate_domains, format_domain_table
from .generation import GenerationTask, evaluate_generation, generate_texts
from .judge import JUDGE_PROMPT, JudgeResult, LLMJudge, parse_judge_reply
from .multiple_choice import (
    MultipleChoiceCalibration,
    MultipleChoiceDetails,
    multiple_choice_metrics,
    read_questions,
    task_key,
)
from .prompts import MMLU_HEADER, MCQuestion
from .reference import bleu, exact_match, reference_scores, rouge_l

__all__ = [
    "AgreementResult",
    "agreement",
    "MMLU_HEADER",
    "MCQuestion",
    "MultipleChoiceCalibration",
    "MultipleChoiceDetails",
    "multiple_choice_metrics",
    "read_questions",
    "task_key",
    "CrossTaskModel",
    "CrossTaskReport",
    "EvalTask",
    "cross_task_report",
    "evaluate_cross_task",
    "DomainModel",
    "DomainReport",
    "domain_report",
    "evaluate_domains",
    "format_domain_table",
    "domain_scores",
    "GenerationTask",
    "evaluate_generation",
    "generate_texts",
    "JUDGE_PROMPT",
    "JudgeResult",
    "LLMJudge",
    "parse_judge_reply",
    "bleu",
    "exact_match",
    "reference_scores",
    "rouge_l",
]
