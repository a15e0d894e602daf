"""Models on disk: ``<name>/weights.safetensors`` + ``card.json`` (+ ``card.md``).

Weights are safetensors (no code runs on load).  :func:`load_model` checks the file's sha256 against the
card and every tensor's shape against the architecture before the weights are used.

A model is named by a path to its folder, or by a name looked up in the model path: the folders in
``$MCDROP_MODELS`` (``os.pathsep``-separated, like ``PATH``), then the models bundled with the package
(``mcdrop.bundled``, found through ``importlib.resources``; the repository's ``models/`` folder).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mcdrop.errors import ModelError
from mcdrop.io.atomic import new_mode
from mcdrop.nets.models import build_model, describe_architecture, logit_layer, multiply_adds
from mcdrop.schemas import ModelCard
from mcdrop.uncertainty.calibration import Calibration

__all__ = [
    "COMPUTED_CARD_FIELDS",
    "DEFAULT_MODEL",
    "Artifact",
    "ArtifactError",
    "ModelNotFoundError",
    "available_models",
    "bundled_models_dir",
    "load_artifact",
    "load_model",
    "model_path",
    "render_card",
    "resolve_model",
    "save_model",
]

DEFAULT_MODEL = "fashion-mnist"


def bundled_models_dir() -> Path | None:
    """The folder of the models shipped with the package, or None if it was installed without them."""
    try:
        root = resources.files("mcdrop.bundled")
    except ModuleNotFoundError:
        return None
    path = Path(str(root))
    return path if path.is_dir() else None


def model_path() -> list[Path]:
    """The folders searched for a model name: ``$MCDROP_MODELS`` entries, then the bundled models."""
    folders = [Path(p) for p in os.environ.get("MCDROP_MODELS", "").split(os.pathsep) if p]
    bundled = bundled_models_dir()
    return [*folders, *([bundled] if bundled is not None else [])]


class ArtifactError(ModelError, ValueError):
    """A model directory is missing, incomplete or does not match its card."""


class ModelNotFoundError(ArtifactError):
    """No model directory by that name or path (a usage error, unlike a damaged model)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def available_models() -> list[str]:
    """Names of the models (folders with a card) on the model path, first occurrence first."""
    names = [p.parent.name for folder in model_path() for p in sorted(folder.glob("*/card.json"))]
    return list(dict.fromkeys(names))


def resolve_model(name_or_path: str | os.PathLike[str] | None) -> Path:
    """A model folder from a path, or a name on the model path (default: the default model)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.name == str(name_or_path):  # a bare name
        for folder in model_path():
            if (folder / path.name / "card.json").is_file():
                return folder / path.name
    names = ", ".join(available_models()) or "none"
    where = ", ".join(str(p) for p in model_path()) or "nowhere: MCDROP_MODELS is unset and no model is bundled"
    raise ModelNotFoundError(
        f"model {str(name_or_path)!r} not found: expected a model folder or one of the models on the model path "
        f"({names}; searched {where})"
    )


COMPUTED_CARD_FIELDS = frozenset({"architecture", "weights_file", "weights_sha256", "parameter_shapes", "cost", "created",
                                  "library_version", "calibration_file", "calibration_sha256", "calibration"})
"""The card fields :func:`save_model` fills in itself (leave them out of the ``card`` passed to it)."""


def save_model(model: nn.Module, directory: Path, card: dict[str, Any], calibration: Calibration | None = None,
               calibration_meta: dict[str, Any] | None = None) -> ModelCard:
    """Write a model folder: ``weights.safetensors`` (and ``calibration.safetensors``), ``card.json``, ``card.md``.

    All or nothing: the folder is built beside ``directory`` and renamed into place, so a failure leaves the
    previous folder (or none) as it was; other files in an existing folder are kept.

    Args:
        model: one of mcdrop's models, which know their ``config()``: :class:`~mcdrop.nets.models.DropoutMLP`,
            :class:`~mcdrop.nets.models.DropoutCNN`, or a network imported by :func:`mcdrop.export_model` (use
            that for your own ``nn.Module``: it writes the folder through this function).
        directory: the model folder.
        card: the card's own fields: ``name``, ``version``, ``task`` (``classification``, ``homoscedastic`` or
            ``heteroscedastic``), ``input_shape`` (a row's shape, e.g. ``[784]`` or ``[28, 28]``), ``normalisation``
            (how a row is prepared); optional ``input_size`` (default: the product of ``input_shape``),
            ``description``, ``class_names``, ``tau`` (homoscedastic noise precision), ``temperature``,
            ``training``, ``data``, ``metrics`` and any extra keys.  Filled in here: ``architecture``,
            ``weights_file``, ``weights_sha256``, ``parameter_shapes``, ``cost`` (multiply-adds per row),
            ``created``, ``library_version`` and the calibration fields.
        calibration: the calibration to store (None: the folder has none).
        calibration_meta: the card's ``calibration`` section (default: ``calibration.meta``).

    Returns the card as written.  Raises TypeError for a model without ``config()`` and pydantic's
    ValidationError for a card missing a field, before anything is written.
    """
    from mcdrop import __version__

    config_fn = getattr(model, "config", None)
    if not callable(config_fn):
        raise TypeError(f"save_model stores mcdrop's models (DropoutMLP, DropoutCNN, imported networks), not a "
                        f"{type(model).__name__}; for your own nn.Module use mcdrop.export_model(model, directory, "
                        "task=..., example_input=...)")
    config = config_fn()
    directory = Path(directory)
    shape = card.get("input_shape") or [int(card.get("input_size", config.get("in_features", 1)))]
    size = int(card.get("input_size", math.prod(int(d) for d in shape)))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        weights = staging / "weights.safetensors"
        save_file(state, str(weights))
        extra: dict[str, Any] = {}
        if calibration is not None:
            path = staging / "calibration.safetensors"
            tensors = {k: v.contiguous().cpu() for k, v in calibration.tensors().items()}
            save_file(tensors, str(path))
            extra = {"calibration_file": path.name, "calibration_sha256": sha256(path),
                     "calibration": calibration_meta if calibration_meta is not None else calibration.meta}
        full = ModelCard.model_validate(
            {
                "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
                "library_version": __version__,
                "input_size": size,
                **card,
                "input_shape": list(shape),
                **extra,
                "architecture": config,
                "weights_file": weights.name,
                "weights_sha256": sha256(weights),
                "parameter_shapes": {k: list(v.shape) for k, v in state.items()},
                "cost": float(multiply_adds(model, torch.zeros(1, *shape))),
            }
        )
        (staging / "card.json").write_text(full.model_dump_json(indent=2) + "\n")
        (staging / "card.md").write_text(render_card(full))
        staging.chmod(new_mode(directory=True))  # mkdtemp made it 0o700
        for path in staging.iterdir():
            path.chmod(new_mode())
        _replace_folder(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return full


_WRITTEN = ("weights.safetensors", "calibration.safetensors", "card.json", "card.md")


def _replace_folder(staging: Path, directory: Path) -> None:
    """Move ``staging`` to ``directory``, keeping files of an existing ``directory`` that a save does not write."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    if not directory.is_dir():
        raise ArtifactError(f"{directory} exists and is not a folder: cannot write a model folder there")
    for path in directory.iterdir():
        if path.name not in _WRITTEN and not (staging / path.name).exists():
            if path.is_dir():
                shutil.copytree(path, staging / path.name, symlinks=True)
            else:
                shutil.copy2(path, staging / path.name, follow_symlinks=False)
    old = directory.with_name(f".{directory.name}.{os.getpid()}.old")
    os.replace(directory, old)
    try:
        os.replace(staging, directory)
    except BaseException:
        os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class Artifact:
    """A loaded model: the network (eval mode), its card, its folder and its calibration (or None)."""

    model: nn.Module
    card: ModelCard
    directory: Path
    calibration: Calibration | None


def _checked(path: Path, expected: str, card_path: Path, what: str) -> Path:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the card {card_path} names it as the {what} file")
    actual = sha256(path)
    if actual != expected:
        raise ArtifactError(f"{path} does not match its card: sha256 {actual}, card says {expected}; the file is "
                            "truncated or was modified (re-export the model or restore the file)")
    return path


def _tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{path} is not a readable safetensors file: {err}") from err


def load_artifact(name_or_path: str | os.PathLike[str] | None = None) -> Artifact:
    """Load a model by name or path, checking every file's sha256 and the tensors' shapes; never runs code
    from the files.  Raises :class:`ArtifactError` naming the file and what is wrong."""
    directory = resolve_model(name_or_path)
    card_path = directory / "card.json"
    if not card_path.is_file():
        raise ArtifactError(f"{directory} has no card.json: a model folder needs weights.safetensors and card.json")
    try:
        card = ModelCard.model_validate_json(card_path.read_bytes())
    except ValueError as err:
        first = str(err).splitlines()
        raise ArtifactError(f"{card_path} is not a valid model card: {' '.join(first[:3])}") from err
    state = _tensors(_checked(directory / card.weights_file, card.weights_sha256, card_path, "weight"))
    try:
        model = build_model(card.architecture)
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{card_path}: its architecture cannot be built: {err}") from err
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found = {k: list(v.shape) for k, v in state.items()}
    if found != expected or card.parameter_shapes != expected:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise ArtifactError(f"{directory / card.weights_file} does not fit the architecture in {card_path}: mismatched "
                            f"tensors {diff[:8]}")
    model.load_state_dict(state)
    calibration = None
    if card.calibration_file:
        if not card.calibration_sha256:
            raise ArtifactError(f"{card_path} names {card.calibration_file} but gives no calibration_sha256")
        tensors = _tensors(_checked(directory / card.calibration_file, card.calibration_sha256, card_path, "calibration"))
        try:
            calibration = Calibration(card.task, card.calibration, tensors, card.class_names)
        except (KeyError, ValueError) as err:
            raise ArtifactError(f"{directory / card.calibration_file} does not fit the calibration in {card_path}: "
                                f"{err}") from err
        _check_feature_modules(model, calibration, card_path)
    return Artifact(model.eval(), card, directory, calibration)


def _check_feature_modules(model: nn.Module, calibration: Calibration, card_path: Path) -> None:
    """The calibration's feature layers are modules of ``model``, and its energy layer is the model's logits."""
    density = calibration.density
    if density is None:
        return
    names = calibration.feature_layers
    if not all(isinstance(name, str) and name for name in names):
        raise ArtifactError(f"{card_path}: calibration.feature_layers and density_energy_layer must be module names "
                            f"(non-empty strings), but got {names[:8]}")
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise ArtifactError(f"{card_path}: the calibration reads the outputs of {unknown}, which are not modules "
                            f"of the architecture")
    logits = logit_layer(model)
    if density.energy_layer is not None and density.energy_layer != logits:
        raise ArtifactError(f"{card_path}: calibration.density_energy_layer is {density.energy_layer!r}, but the "
                            f"architecture's logits are the outputs of {logits!r}")


def load_model(name_or_path: str | os.PathLike[str] | None = None) -> tuple[nn.Module, ModelCard]:
    """Load a model by name or path (see :func:`load_artifact`); the model is in eval mode."""
    artifact = load_artifact(name_or_path)
    return artifact.model, artifact.card


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4f}"
    if isinstance(value, (list, tuple)):  # a tuple before the card's JSON round trip
        if len(value) <= 4 and all(isinstance(v, (int, float)) for v in value):
            return "[" + ", ".join(_cell(float(v)) for v in value) + "]"
        return f"({len(value)} points in card.json)"
    return str(value)


def _table(rows: dict[str, Any]) -> list[str]:
    """Markdown tables: one row per key of ``rows`` whose value is a dict of scalars (or of dicts of scalars, as
    ``field subfield`` columns), one column per field; rows with other fields than the row before them start a
    new table."""
    out: list[str] = []
    fields: list[str] = []
    for name, row in rows.items():
        if not isinstance(row, dict):
            continue
        row = {f"{k} {k2}" if isinstance(v, dict) else k: v2 for k, v in row.items()
               for k2, v2 in (v.items() if isinstance(v, dict) else [(k, v)])}  # one nested level as columns
        if list(row) != fields:
            fields = list(row)
            out += ([""] if out else []) + ["| | " + " | ".join(fields) + " |", "|---|" + "---:|" * len(fields)]
        out.append(f"| {name} | " + " | ".join(_cell(row[k]) for k in fields) + " |")
    return out


def _metric_tables(section: str, values: dict[str, Any]) -> list[str]:
    """A nested metrics section (``{key: {row: {field: scalar}}}`` or ``{row: {field: scalar}}``) as tables;
    scalars beside the tables as a list."""
    out = ["", f"### {section}", ""]
    if all(not isinstance(v, dict) or all(not isinstance(x, dict) for x in v.values()) for v in values.values()):
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        out += [f"- {k}: {_cell(v)}" for k, v in scalars.items()] + ([""] if scalars else [])
        return out + _table(values)
    for key, inner in values.items():
        if not isinstance(inner, dict):
            out += [f"- {key}: {_cell(inner)}", ""]
            continue
        flat = {k: v for k, v in inner.items() if not isinstance(v, dict)}
        out += [f"{section}, {key}:", ""]
        if flat:
            out += [f"- {k}: {_cell(v)}" for k, v in flat.items()] + [""]
        if len(flat) == len(inner):
            continue
        out += [*_table(inner), ""]
    return out[:-1]


def render_card(card: ModelCard) -> str:
    """A short Markdown rendering of a model card."""
    arch = card.architecture
    lines = [
        f"# {card.name} (v{card.version})",
        "",
        card.description,
        "",
        f"- task: {card.task.value}",
        f"- architecture: {describe_architecture(arch)}",
        f"- input: shape {card.input_shape} ({card.input_size} features); {card.normalisation}",
    ]
    if card.class_names:
        lines.append(f"- classes: {', '.join(f'{i} {n}' for i, n in enumerate(card.class_names))}")
    if card.tau is not None:
        lines.append(f"- noise precision tau: {card.tau:g} (aleatoric variance 1/tau in target units)")
    if card.temperature is not None:
        lines.append(f"- temperature: {card.temperature:.4f} (fitted on the validation split)")
    lines += [
        f"- data: {card.data}",
        f"- created {card.created} with mcdrop {card.library_version}",
        f"- weights: {card.weights_file}, sha256 {card.weights_sha256}",
        "",
        "## Training",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in card.training.items()]
    lines += ["", "## Metrics", ""]
    nested = []
    for section, values in card.metrics.items():
        if section == "covariate_shift" and isinstance(values, dict):
            continue
        if isinstance(values, dict) and any(isinstance(v, dict) for v in values.values()):
            nested.append((section, values))
        elif isinstance(values, dict):
            lines.append(f"- {section}: " + ", ".join(f"{k} {_cell(v)}" for k, v in values.items()))
        else:
            lines.append(f"- {section}: {values}")
    for section, values in nested:
        lines += _metric_tables(section, values)
    shift = card.metrics.get("covariate_shift")
    if isinstance(shift, dict) and isinstance(shift.get("sets"), dict):
        lines += ["", f"## Under covariate shift (first {shift.get('images')} test images, MC N={shift.get('n_samples')}, "
                  "the service's default decision: the OOD flag or the uncertainty threshold; "
                  "python -m mcdrop.training.shifts)", "",
                  "| set | accuracy | answered | error among answered |", "|---|---:|---:|---:|"]
        for name, row in shift["sets"].items():
            err = row["error_among_answered"]
            err_text = "n/a" if err is None or err != err else f"{err:.1%}"  # none answered
            lines.append(f"| {name} | {row['accuracy']:.3f} | {row['answered']:.1%} | {err_text} "
                         f"({row['errors_n']}/{row['answered_n']}) |")
    return "\n".join(lines) + "\n"
