"""Model registry and checkpoints (safetensors weights + a JSON config; never pickle).

Every model in the registry is an `nn.Module` with a dataclass config and the
same small interface:

- `embed(x) -> (B, D)`: the search embedding,
- `reconstruct(x) -> x_hat`: same shape as `x`, values in [0, 1],
- `loss(x, *, epoch=None) -> (total, parts)`: the training objective and its
  named parts. `epoch` is the (fractional) number of epochs trained so far, for
  models with a schedule inside the objective (the VAE's KL warm-up); `None`
  means "fully trained" and is what evaluation passes.

Each model class also has `kind` (its registry name), `config` (its dataclass)
and `embed_dim`.

Inputs are float tensors (B, C, H, W) in [0, 1].
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from latentsight.embedder.devices import check_device
from latentsight.embedder.errors import ModelError
from latentsight.embedder.fsutil import atomic_write, atomic_write_bytes
from latentsight.embedder.models.ae import AEConfig, AutoEncoder
from latentsight.embedder.models.vae import VAE, VAEConfig
from latentsight.embedder.models.vit import MaskedViT, ViTConfig
from safetensors.torch import load_file, save_file
from torch import nn

REGISTRY: dict[str, tuple[type[nn.Module], type]] = {
    "ae": (AutoEncoder, AEConfig),
    "vae": (VAE, VAEConfig),
    "vit": (MaskedViT, ViTConfig),
}

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes; refuse anything huge


def config_class(kind: str) -> type:
    return _entry(kind)[1]


def create(kind: str, **config: Any) -> nn.Module:
    """Build a fresh model of `kind` with config fields from `config`."""
    model_cls, config_cls = _entry(kind)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        msg = f"Unknown {kind} config field(s) {unknown}. Allowed: {sorted(names)}."
        raise ModelError(msg)
    return model_cls(config=config_cls(**config))


def save_checkpoint(model: nn.Module, directory: str | Path, meta: dict[str, Any]) -> str:
    """Write `model.safetensors` and `config.json` into `directory`; return the weights' sha256.

    Both files are written to temporary names, fsynced and renamed, so a
    reader never sees half a checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    kind = model.kind
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, {"kind": kind}))
    sha = sha256_file(directory / WEIGHTS_FILE)
    doc = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": dataclasses.asdict(model.config),
        "weights_sha256": sha,
        **meta,
    }
    atomic_write_bytes(directory / CONFIG_FILE, json.dumps(doc, indent=2).encode())
    return sha


def load_checkpoint(
    directory: str | Path,
    *,
    expected_sha256: str | None = None,
    map_location: str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model exactly from a checkpoint directory.

    Raises:
        ModelError: files missing, JSON invalid, unknown kind or fields, or the
            weights' sha256 differs from `expected_sha256` (the catalog's).
    """
    doc, cfg_path, w_path = read_checkpoint(directory, kinds=REGISTRY,
                                            expected_sha256=expected_sha256)
    kind = doc["kind"]
    model_cls, config_cls = REGISTRY[kind]
    config = checked_config(doc["config"], config_cls, path=cfg_path, kind=kind)
    try:
        model = model_cls(config=config)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{cfg_path}: invalid {kind} config: {e}") from e
    load_weights(model, w_path, map_location=map_location)
    return model, doc


def read_checkpoint(
    directory: str | Path, *, kinds: Iterable[str], expected_sha256: str | None = None,
    what: str = "a checkpoint",
) -> tuple[dict[str, Any], Path, Path]:
    """The checked config.json of a checkpoint directory: (document, its path, weights' path).

    Every checkpoint loader goes through here (encoders, the GAN): both files
    present, the config under MAX_CONFIG_BYTES, valid JSON with a 'config'
    object, a `kind` in `kinds`, and the weights' sha256 equal to
    `expected_sha256` when given. Raises ModelError naming the file otherwise.
    """
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        msg = f"{directory}: not {what} (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        raise ModelError(msg)
    size = cfg_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        msg = f"{cfg_path}: {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit for a config"
        raise ModelError(msg)
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{cfg_path}: invalid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ModelError(f"{cfg_path}: expected an object with a 'config' object")
    kinds = sorted(kinds)
    kind = doc.get("kind")
    if kind not in kinds:
        msg = f"{cfg_path}: unknown model kind {kind!r}; known: {kinds}"
        raise ModelError(msg)
    if expected_sha256 is not None:
        actual = sha256_file(w_path)
        if actual != expected_sha256:
            msg = (
                f"{w_path}: sha256 {actual[:12]}... differs from the catalog's "
                f"{expected_sha256[:12]}...; the file was changed or replaced, refusing to load it"
            )
            raise ModelError(msg)
    return doc, cfg_path, w_path


def checked_config(cfg: dict[str, Any], config_cls: type, *, path: Path, kind: str) -> Any:
    """`config_cls(**cfg)` after refusing unknown fields and JSON values of the wrong type."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    bad = sorted(set(cfg) - set(fields))
    if bad:
        raise ModelError(f"{path}: unknown {kind} config field(s) {bad}")
    _check_types(cfg, fields, f"{path}: {kind} config")
    try:
        return config_cls(**cfg)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: invalid {kind} config: {e}") from e


def load_weights(model: nn.Module, w_path: str | Path, *, map_location: str = "cpu") -> None:
    """Load safetensors weights into `model` (strict), then eval mode; ModelError if they misfit."""
    try:
        state = load_file(str(w_path), device=map_location)
        model.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on bad files
        raise ModelError(f"{w_path}: weights do not fit the config: {e}") from e
    model.eval()


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
}


def _check_types(cfg: dict[str, Any], fields: dict[str, dataclasses.Field], where: str) -> None:
    """Each JSON value must have its dataclass field's type (int, float, bool, str)."""
    for name, value in cfg.items():
        ann = fields[name].type if isinstance(fields[name].type, str) else getattr(
            fields[name].type, "__name__", "")
        allowed = _JSON_TYPES.get(ann.replace(" ", ""))
        if allowed is None:
            continue  # a richer type: the model's own validate() checks it
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            msg = (f"{where}: field {name!r} must be {ann}. "
                   f"Got {type(value).__name__} {value!r} instead.")
            raise ModelError(msg)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(device: str = "auto") -> torch.device:
    """Map `auto|cpu|cuda` to a torch device; auto uses CUDA when torch sees a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(device)


def _entry(kind: str) -> tuple[type[nn.Module], type]:
    try:
        return REGISTRY[kind]
    except KeyError:
        msg = f"Unknown model kind {kind!r}. Known: {', '.join(sorted(REGISTRY))}."
        raise ModelError(msg) from None
