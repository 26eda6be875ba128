"""Binned calibration error (ECE / RMS-CE / MCE, equal-width or equal-mass bins) as an offline `evaluate` module.

Load it with ``evaluate.load(hf_calib.metrics.evaluate_module("ece"))``; the numbers come from
``hf_calib.metrics.calibration_error``, so they equal the library's and ``CalibrationState``'s.
"""

import datasets
import evaluate

from hf_calib.metrics import calibration_error, top_label_confidence

_DESCRIPTION = """
Expected calibration error of top-label confidences. Bin b of B equal-width bins is (b/B, (b+1)/B] (a
confidence of 0 goes to the first bin); with n_b samples, accuracy acc_b and mean confidence conf_b in bin b
and N samples in all, ECE = sum_b (n_b / N) |acc_b - conf_b|. norm="l2" gives the RMS calibration error
sqrt(sum_b (n_b / N) (acc_b - conf_b)^2) and norm="max" the MCE max_b |acc_b - conf_b| over non-empty bins;
binning="quantile" uses equal-mass bins (adaptive ECE). Conventions: hf_calib docs/metrics.md.
"""

_KWARGS_DESCRIPTION = """
Two input forms (chosen from the first batch; do not mix them in one instance):

Args:
    predictions: either top-1 confidences in [0, 1], one float per sample, with references the 0/1
        correctness of each prediction (1 = correct); or probability rows (softmax outputs, one list of
        C floats summing to 1 per sample), with references the integer class labels in [0, C).
    references: see predictions.
    n_bins: number of bins B >= 1 (default 15).
    norm: "l1" (ECE, default), "l2" (RMS-CE) or "max" (MCE).
    binning: "uniform" (equal width, default) or "quantile" (equal mass).

Returns:
    One key, named after the quantity: "ece", "rms_ce" or "mce", prefixed with "adaptive_" for
    binning="quantile"; a float in [0, 1].

Example:
    >>> ece = evaluate.load(hf_calib.metrics.evaluate_module("ece"))
    >>> ece.compute(predictions=[0.95, 0.65, 0.85], references=[1, 0, 1], n_bins=10)
    {'ece': 0.2833333333333333}
"""

_CITATION = """
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={International Conference on Machine Learning},
  year={2017}
}
"""

_NAMES = {"l1": "ece", "l2": "rms_ce", "max": "mce"}


class ExpectedCalibrationError(evaluate.Metric):
    """ECE of confidences against correctness, or of probability rows against labels."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                # Correctness is stored as float64 so that hf_calib rejects anything but 0/1; an int64
                # feature would silently truncate e.g. a probability passed by mistake to 0.
                datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
                ),
            ],
            reference_urls=["https://arxiv.org/abs/1706.04599"],
        )

    def _compute(self, predictions, references, n_bins=15, norm="l1", binning="uniform"):
        if len(predictions) and isinstance(predictions[0], list | tuple):
            confidences, _, correct = top_label_confidence(predictions, references)
        else:
            confidences, correct = predictions, references
        value = calibration_error(confidences, correct, n_bins=n_bins, norm=norm, binning=binning)
        name = _NAMES[norm]
        return {f"adaptive_{name}" if binning == "quantile" else name: value}
