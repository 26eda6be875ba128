"""``CalibratedAdapter``: a PEFT adapter together with what calibrates it, saved, loaded and pushed as one folder.

Layout (``save_pretrained(folder)``; the adapter files sit at the root as PEFT writes them, so PEFT and the Hub
still recognise the repository as an adapter)::

    adapter_config.json, adapter_model.safetensors    the PEFT adapter (classifier head in modules_to_save)
    calibration.json                                  manifest: format, base-model fingerprint, label smoothing,
                                                      components, report, card settings, required files
    calibration/temperature.json                      TemperatureScaler (or calibration/thermometer*.{json,safetensors})
    adue_head.safetensors, adue_config.json           AdUE head (where PEFT's save_pretrained puts it)
    reliability_diagram.png                           reliability diagram of the calibrated probabilities
    README.md                                         model card (hf_calib.hub.card)

Calling the bundle runs the adapted model and adds to its output ``calibrated_probs = softmax(logits / T)``
(shape of ``logits``), ``temperature`` (0-dim) and, with an AdUE head, ``uncertainty`` [B]. ``T`` is the
temperature scaler's, or Thermometer's ``1 / mean_i beta(h_i)`` over the call's inputs (``h_i``: last hidden
state at input i's last attended token), or 1.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._fingerprint import check_fingerprint, model_fingerprint
from .._folders import finalize_tree, staging_folder, swap_in
from .._model_utils import is_peft
from .._version import __version__
from ..calibrators import Calibrator, registered_calibrators
from ._checks import calibrator_class, check_calibrators, check_finite_weights, verified_manifest
from ._files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    README_FILE,
    check_replaceable,
    file_checksums,
    list_files,
    resolve_folder,
    write_json_file,
)
from ._model import adapter_config, load_base_model, task_of
from .card import DIAGRAM_FILE, CardInfo, build_model_card
from .report import CalibrationReport


class CalibratedAdapter(nn.Module):
    """A PEFT model plus its calibration: temperature or Thermometer, AdUE head, label smoothing, report, card.

    Args:
        model: the adapted model (``peft.PeftModel`` of a ``*ForCausalLM`` or ``*ForSequenceClassification``),
            with its AdUE head attached if it has one (``hf_calib.adue.attach_adue_head``).
        temperature: a :class:`hf_calib.scaling.TemperatureScaler` or a float ``T > 0``.
        thermometer: a :class:`hf_calib.scaling.Thermometer` reading this model's last hidden states
            (exclusive with ``temperature``).
        label_smoothing: the epsilon used during fine-tuning (recorded, shown in the card).
        report: the :class:`CalibrationReport` measured on held-out data (metrics and diagram).
        card: :class:`CardInfo` for the model card (base model id, datasets, training settings, ...).

    Example::

        bundle = CalibratedAdapter(peft_model, temperature=TemperatureScaler().fit(val_logits, val_labels),
                                   report=CalibrationReport.from_logits(test_logits, test_labels, temperature=T))
        bundle.save_pretrained("my-bundle")                  # or bundle.push_to_hub("me/my-bundle")
        loaded = CalibratedAdapter.from_pretrained("my-bundle", base_model=base)
        loaded(**inputs).calibrated_probs
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        temperature: Any = None,
        thermometer: nn.Module | None = None,
        calibrators: Sequence[Calibrator] = (),
        label_smoothing: float | None = None,
        report: CalibrationReport | None = None,
        card: CardInfo | None = None,
    ) -> None:
        super().__init__()
        from ..scaling import TemperatureScaler, Thermometer

        if not is_peft(model):
            raise TypeError(
                f"model must be a peft.PeftModel (the adapted model); got {type(model).__name__}. "
                "Wrap it with peft.get_peft_model or load it with PeftModel.from_pretrained."
            )
        self.task = task_of(model)
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            temperature = TemperatureScaler(float(temperature))
        if temperature is not None and not isinstance(temperature, TemperatureScaler):
            raise TypeError(
                f"temperature must be a TemperatureScaler, a float or None; got {type(temperature).__name__}."
            )
        if thermometer is not None and not isinstance(thermometer, Thermometer):
            raise TypeError(f"thermometer must be a hf_calib.scaling.Thermometer; got {type(thermometer).__name__}.")
        if temperature is not None and thermometer is not None:
            raise ValueError("pass either temperature or thermometer, not both: each sets the temperature.")
        explicit = [c for c in (temperature, thermometer) if c is not None] + list(calibrators)
        check_calibrators(explicit)
        if label_smoothing is not None and not (
            isinstance(label_smoothing, int | float)
            and not isinstance(label_smoothing, bool)
            and 0 <= label_smoothing < 1
        ):
            raise ValueError(f"label_smoothing must be a number in [0, 1) or None; got {label_smoothing!r}.")
        if report is not None and not isinstance(report, CalibrationReport):
            raise TypeError(f"report must be a CalibrationReport; got {type(report).__name__}.")
        if card is not None and not isinstance(card, CardInfo):
            raise TypeError(f"card must be a CardInfo; got {type(card).__name__}.")
        self.model = model
        self._explicit = explicit
        # Calibrators that are modules (Thermometer) follow the bundle's .to() / .eval() as submodules.
        self.calibrator_modules = nn.ModuleList(c for c in explicit if isinstance(c, nn.Module))
        self.label_smoothing = None if label_smoothing is None else float(label_smoothing)
        self.report = report
        self.card = card or CardInfo()

    # ------------------------------------------------------------------ components
    @property
    def calibrators(self) -> list[Calibrator]:
        """The bundle's calibrators: those passed in, then those living on the model (an attached AdUE head)."""
        found = list(self._explicit)
        names = {c.name for c in found}
        for cls in registered_calibrators().values():
            if cls.name not in names and (attached := cls.from_model(self.model)) is not None:
                found.append(attached)
                names.add(cls.name)
        return found

    def _named(self, name: str) -> Any:
        return next((c for c in self.calibrators if c.name == name), None)

    @property
    def temperature_scaler(self) -> Any:
        """The :class:`hf_calib.scaling.TemperatureScaler`, or None."""
        return self._named("temperature")

    @property
    def thermometer(self) -> Any:
        """The :class:`hf_calib.scaling.Thermometer`, or None."""
        return self._named("thermometer")

    @property
    def has_uncertainty(self) -> bool:
        """Whether outputs carry ``uncertainty`` (an AdUE head is attached)."""
        return self._named("adue") is not None

    # ------------------------------------------------------------------ inference
    def forward(self, *args: Any, temperature: float | None = None, **kwargs: Any) -> Any:
        """The model's output plus ``calibrated_probs`` (float32, shape of ``logits``) and ``temperature``, and
        what each calibrator adds (``uncertainty`` with an AdUE head).

        ``temperature`` overrides the bundle's (e.g. a Thermometer temperature computed once for a whole task).
        """
        calibrators = self.calibrators
        setter = next((c for c in calibrators if c.sets_temperature), None)
        need_hidden = temperature is None and setter is not None and setter.wants_hidden_states
        wanted_hidden = kwargs.get("output_hidden_states")
        if need_hidden:
            kwargs["output_hidden_states"] = True
        outputs = self.model(*args, **kwargs)
        logits = outputs["logits"]
        if temperature is None:
            temperature = 1.0 if setter is None else setter.temperature_for(outputs, kwargs)
            if need_hidden and not wanted_hidden:
                outputs["hidden_states"] = None
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}.")
        outputs["temperature"] = torch.tensor(float(temperature))
        outputs["calibrated_probs"] = torch.softmax(logits.float() / float(temperature), dim=-1)
        for calibrator in calibrators:
            calibrator.update_outputs(outputs, kwargs)
        return outputs

    # ------------------------------------------------------------------ saving
    def manifest(self, files: list[str], checksums: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The ``calibration.json`` content for a bundle holding ``files`` (with their ``checksums``)."""
        components: dict[str, Any] = dict.fromkeys(registered_calibrators())
        components.update({c.name: dict(c.manifest_entry()) for c in self.calibrators})
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "hf_calib_version": __version__,
            "task": self.task,
            "base_model": model_fingerprint(self.model, weights=True),
            "label_smoothing": self.label_smoothing,
            "components": components,
            "report": None if self.report is None else self.report.to_dict(),
            "reliability_diagram": DIAGRAM_FILE if DIAGRAM_FILE in files else None,
            "card": self.card.to_dict(),
            "files": files,
            "checksums": checksums if checksums is not None else {},
        }

    def _card_info(self) -> CardInfo:
        info = CardInfo.from_dict(self.card.to_dict())
        if info.base_model is None:
            info.base_model = model_fingerprint(self.model).get("name_or_path")
        return info

    def model_card(self, repo_id: str | None = None, *, diagram: bool | None = None) -> Any:
        """The bundle's ``huggingface_hub.ModelCard`` (see :mod:`hf_calib.hub.card`)."""
        if diagram is None:
            diagram = self.report is not None and self.report.state is not None and self.report.state.n_samples > 0
        return build_model_card(
            info=self._card_info(),
            task=self.task,
            repo_id=repo_id,
            adapter=adapter_config(self.model),
            label_smoothing=self.label_smoothing,
            calibrators=self.calibrators,
            report=self.report,
            diagram=diagram,
        )

    def write_components(self, folder: str | os.PathLike[str], *, adapter: bool = True) -> list[str]:
        """Write the adapter (unless ``adapter=False``), calibrators, head and diagram into ``folder``.

        Returns the bundle's files (relative paths, sorted), the PEFT files included even when a Trainer writes
        them itself. Refuses non-finite weights. The manifest and card are written by :meth:`write_manifest`.
        """
        folder = Path(folder)
        self.check_finite()
        if adapter:
            # PEFT writes adapter_config.json, adapter_model.safetensors and its own README (replaced below);
            # a PEFT model with an AdUE head also writes the head (attach_adue_head extends save_pretrained).
            self.model.save_pretrained(str(folder), safe_serialization=True)
        for calibrator in self.calibrators:
            calibrator.save(folder, self.model)
        if self.report is not None and self.report.state is not None and self.report.state.n_samples > 0:
            self.report.save_diagram(folder / DIAGRAM_FILE)
        (folder / README_FILE).unlink(missing_ok=True)
        files = set(list_files(folder)) | {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE}
        return sorted(
            name
            for name in files
            if name not in (MANIFEST_FILE, README_FILE) and not any(p.startswith(".") for p in Path(name).parts)
        )

    def write_manifest(
        self, folder: str | os.PathLike[str], files: list[str], *, repo_id: str | None = None
    ) -> list[str]:
        """Hash ``files`` of ``folder`` into ``calibration.json``, then write the card; returns every bundle file.

        Every listed file must exist in ``folder``. The manifest is written atomically, after the files it
        describes, so a folder never holds a manifest whose files it lacks.
        """
        folder = Path(folder)
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"cannot write the manifest in {folder}: {', '.join(missing)} missing.")
        manifest = self.manifest(files, file_checksums(folder, files))
        write_json_file(folder / MANIFEST_FILE, manifest)
        self.model_card(repo_id, diagram=DIAGRAM_FILE in files).save(folder / README_FILE)
        return [*files, MANIFEST_FILE, README_FILE]

    def write_files(self, folder: str | os.PathLike[str], *, repo_id: str | None = None) -> list[str]:
        """Write the bundle into the empty ``folder`` (not atomic; prefer :meth:`save_pretrained`); returns files."""
        files = self.write_components(folder)
        return self.write_manifest(folder, files, repo_id=repo_id)

    def check_finite(self) -> None:
        """Refuse to save adapter, head or Thermometer weights holding NaN or inf (a diverged run)."""
        check_finite_weights(self.model, self.calibrators)

    def save_pretrained(self, directory: str | os.PathLike[str], *, repo_id: str | None = None) -> Path:
        """Write the bundle to ``directory`` atomically and return its path.

        Everything is written into a temporary sibling folder, flushed to disk and then exchanged with
        ``directory`` in one atomic step, so ``directory`` holds the old bundle or the new one, complete, however
        the process ends (see ``docs/hub.md``); leftovers of killed saves are deleted by the
        next save. ``directory`` must be missing, empty, or an earlier bundle. ``repo_id`` only fills the card's
        example. Files get the usual permissions (0644, folders 0755 under umask 022).
        """
        target = Path(directory).expanduser()
        check_replaceable(target)
        staged = staging_folder(target)
        try:
            self.write_files(staged, repo_id=repo_id)
            finalize_tree(staged)
            swap_in(staged, target)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return target

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | bool | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload calibrated adapter (hf_calib)",
        create_pr: bool = False,
        endpoint: str | None = None,
    ) -> Any:
        """Save the bundle to a temporary folder and upload every file of it (see :func:`hf_calib.hub.push_folder`).

        Returns huggingface_hub's ``CommitInfo``. The token is passed to huggingface_hub and never logged.
        """
        from .push import push_folder

        with tempfile.TemporaryDirectory(prefix="hf_calib_bundle_") as tmp:
            folder = self.save_pretrained(Path(tmp) / "bundle", repo_id=repo_id)
            return push_folder(
                folder,
                repo_id,
                token=token,
                private=private,
                revision=revision,
                commit_message=commit_message,
                create_pr=create_pr,
                endpoint=endpoint,
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike[str],
        *,
        base_model: nn.Module | str | os.PathLike[str],
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        endpoint: str | None = None,
        dtype: torch.dtype | None = None,
        is_trainable: bool = False,
        allow_base_model_mismatch: bool = False,
    ) -> CalibratedAdapter:
        """Load a bundle onto ``base_model`` (a loaded transformers model, or its local path / Hub id).

        Order, so that nothing is used from a bundle that does not fit (``docs/hub.md``, "What is checked when a
        bundle loads"):

        1. the manifest is read and every file it lists is verified against its recorded size and SHA-256, then
           JSON files are parsed and safetensors headers checked;
        2. every tensor of the bundle's safetensors files must be finite;
        3. the base model is checked against the recorded fingerprint: its config first (architecture, model
           type, every shape-defining field) -- before its weights are read when it is given as a path or id --
           then a sample of its weights (any of float32 / bfloat16 / float16 matches; a quantized base is checked
           on its config only, with a warning);
        4. only then are the adapter and the calibrators loaded (their own configs checked against their headers).

        A Hub download (``revision``, ``token``, ``cache_dir``, ``endpoint`` as in
        ``huggingface_hub.snapshot_download``) fetches ``*.json``, ``*.safetensors``, ``*.png`` and the README only.

        Args:
            allow_base_model_mismatch: load even when the base model differs from the recorded fingerprint, or the
                manifest records none; every difference is then reported in a warning instead of an error. For
                users who know the calibration still applies (e.g. a re-saved copy of the same weights in a
                format the check cannot read); the calibrated probabilities are otherwise wrong.

        Raises:
            BundleError (a ``ValueError``): missing, changed or corrupted file (named, expected vs found), non-finite
                tensor, not a bundle, newer format, bundle from before checksums were recorded.
            ValueError: the base model does not match the bundle's fingerprint (what differs is named).
        """
        from peft import PeftModel

        folder = resolve_folder(path_or_repo_id, revision=revision, token=token, cache_dir=cache_dir, endpoint=endpoint)
        manifest = verified_manifest(folder)
        task, fingerprint = manifest["task"], manifest.get("base_model")
        what = f"The calibrated adapter in {folder}"
        checks = {"what": what, "require": True, "ignore_mismatch": allow_base_model_mismatch}
        if isinstance(base_model, str | os.PathLike):
            base_model = load_base_model(base_model, fingerprint or {}, task, token=token, dtype=dtype, **checks)
        elif is_peft(base_model):
            raise TypeError("base_model must be the model without adapter; got a PEFT model (use .get_base_model()).")
        elif not isinstance(base_model, nn.Module) or not hasattr(base_model, "config"):
            raise TypeError(
                f"base_model must be a transformers model or its path / Hub id; got {type(base_model).__name__}."
            )
        check_fingerprint(fingerprint, base_model, **checks)
        model = PeftModel.from_pretrained(base_model, str(folder), is_trainable=is_trainable)
        loaded = [
            calibrator_class(name, folder).load(folder, model, entry)
            for name, entry in (manifest.get("components") or {}).items()
            if entry is not None
        ]
        report = manifest.get("report")
        return cls(
            model,
            calibrators=loaded,
            label_smoothing=manifest.get("label_smoothing"),
            report=None if report is None else CalibrationReport.from_dict(report),
            card=CardInfo.from_dict(manifest.get("card") or {}),
        ).eval()
