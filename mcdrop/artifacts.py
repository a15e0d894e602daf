"""Models on disk: ``models/<name>/weights.safetensors`` + ``card.json`` (+ ``card.md``).

Weights are safetensors (no code runs on load).  :func:`load_model` checks the file's sha256 against the
card and every tensor's shape against the architecture before the weights are used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mcdrop.models import DropoutMLP
from mcdrop.schemas import ModelCard

__all__ = [
    "MODELS_DIR",
    "ArtifactError",
    "available_models",
    "load_model",
    "render_card",
    "resolve_model",
    "save_model",
]

MODELS_DIR = Path(os.environ.get("MCDROP_MODELS", Path(__file__).resolve().parents[1] / "models"))
DEFAULT_MODEL = "fashion-mnist"


class ArtifactError(ValueError):
    """A model directory is missing, incomplete or does not match its card."""


class ModelNotFoundError(ArtifactError):
    """No model directory by that name or path (a usage error, unlike a damaged model)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def available_models(models_dir: Path | None = None) -> list[str]:
    """Names of the model directories (those with a card) under ``models_dir``."""
    root = models_dir or MODELS_DIR
    return sorted(p.parent.name for p in root.glob("*/card.json"))


def resolve_model(name_or_path: str | os.PathLike[str] | None, models_dir: Path | None = None) -> Path:
    """A model directory from a name in ``models/`` (default: the bundled default) or a path."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.is_dir():
        return path
    candidate = (models_dir or MODELS_DIR) / str(name_or_path)
    if candidate.is_dir():
        return candidate
    names = ", ".join(available_models(models_dir)) or "none"
    raise ModelNotFoundError(
        f"model {str(name_or_path)!r} not found: expected a directory or one of the bundled models ({names})"
    )


def save_model(model: DropoutMLP, directory: Path, card: dict[str, object]) -> ModelCard:
    """Write weights, ``card.json`` and ``card.md``; fills in sha256, shapes, date and library version."""
    from mcdrop import __version__

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = directory / "weights.safetensors"
    save_file(state, str(weights))
    full = ModelCard.model_validate(
        {
            "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            "library_version": __version__,
            **card,
            "architecture": model.config(),
            "weights_file": weights.name,
            "weights_sha256": sha256(weights),
            "parameter_shapes": {k: list(v.shape) for k, v in state.items()},
        }
    )
    (directory / "card.json").write_text(full.model_dump_json(indent=2) + "\n")
    (directory / "card.md").write_text(render_card(full))
    return full


def load_model(
    name_or_path: str | os.PathLike[str] | None = None, models_dir: Path | None = None
) -> tuple[DropoutMLP, ModelCard]:
    """Load a model by name or path, checking the sha256 and the shapes; the model is in eval mode."""
    directory = resolve_model(name_or_path, models_dir)
    card_path = directory / "card.json"
    if not card_path.is_file():
        raise ArtifactError(f"{directory} has no card.json: a model directory needs weights.safetensors and card.json")
    try:
        card = ModelCard.model_validate_json(card_path.read_text())
    except ValueError as err:
        raise ArtifactError(f"{card_path} is not a valid model card: {err}") from err
    weights = directory / card.weights_file
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing: the card {card_path} names it as the weight file")
    actual = sha256(weights)
    if actual != card.weights_sha256:
        raise ArtifactError(
            f"{weights} does not match its card: sha256 {actual}, card says {card.weights_sha256}; the "
            "file is truncated or was modified (re-export the model or restore the file)"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"{weights} is not a readable safetensors file: {err}") from err
    model = DropoutMLP(**card.architecture)  # type: ignore[arg-type]
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found = {k: list(v.shape) for k, v in state.items()}
    if found != expected or card.parameter_shapes != expected:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise ArtifactError(f"{weights} does not fit the architecture in {card_path}: mismatched tensors {diff}")
    model.load_state_dict(state)
    return model.eval(), card


def render_card(card: ModelCard) -> str:
    """A short Markdown rendering of a model card."""
    arch = card.architecture
    lines = [
        f"# {card.name} (v{card.version})",
        "",
        card.description,
        "",
        f"- task: {card.task.value}",
        f"- architecture: DropoutMLP {arch.get('in_features')} -> {arch.get('hidden')} -> {arch.get('out_features')}, "
        f"dropout {arch.get('dropout')}, input dropout {arch.get('input_dropout')}",
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
    for section, values in card.metrics.items():
        if isinstance(values, dict):
            lines.append(
                f"- {section}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            )
        else:
            lines.append(f"- {section}: {values}")
    return "\n".join(lines) + "\n"
