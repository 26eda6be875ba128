"""``MultipleChoiceEvalMixin``: multiple-choice calibration metrics run once per ``evaluate()`` call.

Part of :class:`~hf_calib.trainer.mixin.CalibratedLossMixin`, which sets ``multiple_choice`` (the evaluators),
``_mc_depth`` and ``_mc_prefix`` and calls :meth:`_mc_merge` from its ``evaluation_loop``.
"""

from __future__ import annotations

from typing import Any


class MultipleChoiceEvalMixin:
    """Runs ``self.multiple_choice`` once per outermost ``evaluate()`` and merges the metrics into its log entry."""

    multiple_choice: list[Any]
    _mc_depth: int
    _mc_prefix: str | None

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """The base trainer's ``evaluate``; with ``multiple_choice``, its metrics run once per call.

        The outermost call arms them with its ``metric_key_prefix``; the first evaluation loop inside it
        (the only one, or the first dataset's of a dict of eval datasets) adds them to its metrics, so
        they are logged in Trainer's own evaluation entry. ``predict()`` does not run them.
        """
        outer = self._mc_depth == 0
        if outer and self.multiple_choice:
            self._mc_prefix = metric_key_prefix
        self._mc_depth += 1
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._mc_depth -= 1
            if outer:
                self._mc_prefix = None

    def _mc_merge(self, output: Any) -> Any:
        """Add the armed multiple-choice metrics to an evaluation loop's output (see :meth:`evaluate`)."""
        prefix, self._mc_prefix = self._mc_prefix, None
        if prefix is not None:
            from ..callbacks.multiple_choice import run_multiple_choice

            progress = self.is_world_process_zero() and not self.args.disable_tqdm
            mc = run_multiple_choice(self.multiple_choice, self.model, self.processing_class, prefix, progress=progress)
            output.metrics.update(mc)
        return output
