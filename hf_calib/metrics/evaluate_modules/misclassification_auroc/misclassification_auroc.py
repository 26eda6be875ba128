"""Misclassification-detection AUROC of an uncertainty score as an offline `evaluate` module.

Load it with ``evaluate.load(hf_calib.metrics.evaluate_module("misclassification_auroc"))``; the numbers come
from ``hf_calib.metrics.misclassification_auroc``, so they equal the library's and ``CalibrationState``'s.
"""

import datasets
import evaluate

from hf_calib.metrics import misclassification_auroc

_DESCRIPTION = """
Area under the ROC curve of an uncertainty score for detecting misclassified samples (errors are the
positive class; a higher uncertainty should mean a likelier error):
AUROC = P(u_err > u_ok) + 0.5 P(u_err = u_ok) over pairs of an error and a correct prediction, equal to
sklearn's roc_auc_score(errors, uncertainty). 0.5 is chance, 1 a perfect detector. Undefined (ValueError)
unless there is at least one error and one correct prediction. Conventions: hf_calib docs/metrics.md.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: uncertainty score of each sample, any finite float (e.g. 1 - max softmax probability,
        the entropy, or AdUE's head output).
    references: 1 if the prediction was wrong (an error), 0 if it was right.

Returns:
    "misclassification_auroc": a float in [0, 1].

Example:
    >>> auroc = evaluate.load(hf_calib.metrics.evaluate_module("misclassification_auroc"))
    >>> auroc.compute(predictions=[0.1, 0.4, 0.35, 0.8], references=[0, 0, 1, 1])
    {'misclassification_auroc': 0.75}
"""

_CITATION = """
@inproceedings{hendrycks2017baseline,
  title={A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks},
  author={Hendrycks, Dan and Gimpel, Kevin},
  booktitle={International Conference on Learning Representations},
  year={2017}
}
"""


class MisclassificationAuroc(evaluate.Metric):
    """AUROC of an uncertainty score against the error indicator."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # The error indicator is stored as float64 so that hf_calib rejects anything but 0/1 (an int64
            # feature would silently truncate e.g. 0.7 to 0).
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
            format="numpy",
            reference_urls=["https://arxiv.org/abs/1610.02136"],
        )

    def _compute(self, predictions, references):
        return {"misclassification_auroc": misclassification_auroc(predictions, references)}
