"""Paths of the `evaluate` module scripts shipped with hf_calib, for offline ``evaluate.load``.

``evaluate.load(path)`` with a local folder whose script has the folder's name (``.../ece/ece.py``) copies
the script into its modules cache (``HF_MODULES_CACHE``, default ``~/.cache/huggingface/modules``) and
imports it from there: it never contacts the Hugging Face Hub (checked against evaluate 0.4.6). The scripts
import ``hf_calib.metrics``, so their numbers are the library's.
"""

from __future__ import annotations

from pathlib import Path

EVALUATE_MODULES_DIR = Path(__file__).resolve().parent / "evaluate_modules"
EVALUATE_MODULE_NAMES = ("brier", "ece", "misclassification_auroc")


def evaluate_module(name: str) -> str:
    """Local path of the `evaluate` module ``name``, to pass to ``evaluate.load``.

    Modules (inputs as ``predictions`` / ``references``; options are ``compute`` keyword arguments):

    * ``"ece"``: confidences [N] floats with 0/1 correctness [N], or probability rows [N][C] with labels
      [N]; ``n_bins=15``, ``norm="l1"|"l2"|"max"``, ``binning="uniform"|"quantile"``.
    * ``"brier"``: probability rows [N][C] with labels [N]; ``normalize=False``.
    * ``"misclassification_auroc"``: uncertainty scores [N] with the 0/1 error indicator [N].

    Example:
        >>> import evaluate
        >>> ece = evaluate.load(evaluate_module("ece"))

    Returns:
        The absolute path of the module's folder (it holds ``<name>.py``).

    Raises:
        ValueError: if ``name`` is not one of the available modules (the message lists them).
        FileNotFoundError: if the script is missing from the installation (package data not installed).
    """
    if name not in EVALUATE_MODULE_NAMES:
        raise ValueError(f"unknown evaluate module {name!r}; available: {', '.join(EVALUATE_MODULE_NAMES)}.")
    folder = EVALUATE_MODULES_DIR / name
    if not (folder / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"the evaluate module script {folder / (name + '.py')} is missing: this hf_calib installation lacks its "
            "package data; reinstall hf-calib."
        )
    return str(folder)
