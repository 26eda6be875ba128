"""Multiclass Brier score as an offline `evaluate` module.

Load it with ``evaluate.load(hf_calib.metrics.evaluate_module("brier"))``; the numbers come from
``hf_calib.metrics.brier_score``, so they equal the library's and ``CalibrationState``'s.
"""

import datasets
import evaluate

from hf_calib.metrics import brier_score

_DESCRIPTION = """
Multiclass Brier score of probability rows p (N samples, C classes) against integer labels y:
brier = (1/N) sum_i sum_c (p_ic - 1[y_i = c])^2, in [0, 2] (Brier's definition). normalize=True divides by C,
i.e. the mean over all N*C entries (what Thermometer's code reports), in [0, 2/C]. Lower is better.
Conventions: hf_calib docs/metrics.md.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: probability rows (softmax outputs), one list of C floats in [0, 1] summing to 1 (within
        1e-2) per sample.
    references: integer class labels in [0, C), one per sample.
    normalize: divide by the number of classes C (default False).

Returns:
    "brier" (normalize=False) or "brier_normalized" (normalize=True): a float.

Example:
    >>> brier = evaluate.load(hf_calib.metrics.evaluate_module("brier"))
    >>> brier.compute(predictions=[[0.5, 0.5], [0.25, 0.75]], references=[0, 1])
    {'brier': 0.3125}
"""

_CITATION = """
@article{brier1950verification,
  title={Verification of Forecasts Expressed in Terms of Probability},
  author={Brier, Glenn W.},
  journal={Monthly Weather Review},
  volume={78},
  number={1},
  pages={1--3},
  year={1950}
}
"""


class BrierScore(evaluate.Metric):
    """Multiclass Brier score of probability rows against class labels."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://doi.org/10.1175/1520-0493(1950)078<0001:VOFEIT>2.0.CO;2"],
        )

    def _compute(self, predictions, references, normalize=False):
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False; got {normalize!r}.")
        value = brier_score(predictions, references, normalize=normalize)
        return {"brier_normalized" if normalize else "brier": value}
