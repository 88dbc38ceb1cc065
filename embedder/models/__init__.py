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

Integrity: the digest a checkpoint is known by (the catalog's
`checkpoint_sha256`, returned by `save_checkpoint`) covers the weights *and*
the model config (`checkpoint_digest`), so a changed `config.json` is refused
as surely as changed weights. Before any tensor is allocated, a config is
parsed with a size and nesting limit, its numbers are bounded, and the model
it describes is built on torch's "meta" device (no memory) and compared,
tensor by tensor, with the shapes in the weights file's header.
Checkpoints saved before the digest covered the config (the catalog holds
the weights' sha256 alone) still load, with a warning that says how to
re-save them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
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
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

REGISTRY: dict[str, tuple[type[nn.Module], type]] = {
    "ae": (AutoEncoder, AEConfig),
    "vae": (VAE, VAEConfig),
    "vit": (MaskedViT, ViTConfig),
}

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few hundred bytes; refuse anything huge
MAX_CONFIG_INT = 65_536  # no config count or size is anywhere near this (widths are 8-512)
MAX_PARAMS = 500_000_000  # parameters a checkpoint may describe (the largest here has ~10 M)
DIGEST_TAG = b"latentsight-checkpoint-v2\n"


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
    config = dataclasses.asdict(model.config)
    digest = checkpoint_digest(kind, config, sha)
    doc = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "weights_sha256": sha,
        "checkpoint_sha256": digest,  # informative; the catalog's copy is the one trusted
        **meta,
    }
    atomic_write_bytes(directory / CONFIG_FILE, json.dumps(doc, indent=2).encode())
    return digest


def checkpoint_digest(kind: str, config: dict[str, Any], weights_sha256: str) -> str:
    """The sha256 a checkpoint is known by: its weights' sha256, kind and config together."""
    canon = json.dumps({"kind": kind, "config": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(DIGEST_TAG + weights_sha256.encode() + b"\n" + canon.encode()).hexdigest()


def read_config(cfg_path: Path) -> dict[str, Any]:
    """Parse a checkpoint's config.json with a size and nesting limit; a ModelError otherwise."""
    size = cfg_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        msg = f"{cfg_path}: {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit for a config"
        raise ModelError(msg)
    try:
        doc = json.loads(cfg_path.read_text(encoding="utf-8"))
    except RecursionError as e:
        raise ModelError(f"{cfg_path}: invalid JSON: nested too deeply") from e
    except (OSError, ValueError) as e:
        raise ModelError(f"{cfg_path}: invalid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ModelError(f"{cfg_path}: expected an object with a 'config' object")
    return doc


def verify_integrity(directory: Path, doc: dict[str, Any], expected: str | None) -> None:
    """Refuse a checkpoint whose weights or config differ from what the catalog recorded."""
    if expected is None:
        return
    w_path, cfg_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    weights = sha256_file(w_path)
    if weights == expected:  # saved before the digest covered the config
        log.warning("%s: this checkpoint's integrity hash covers its weights only, not "
                    "config.json; re-save it to cover both (train it again, or "
                    "`latentsight.embedder.models.resave_checkpoint(directory)` and record "
                    "the digest it returns)", directory)
        return
    if checkpoint_digest(str(doc.get("kind")), doc["config"], weights) == expected:
        return
    if doc.get("weights_sha256") == weights:
        msg = (f"{cfg_path}: the model config differs from the one the catalog recorded "
               "(config.json was changed); refusing to load it")
    else:
        msg = (f"{w_path}: sha256 {weights[:12]}... differs from the catalog's record; the "
               "file was changed or replaced, refusing to load it")
    raise ModelError(msg)


def resave_checkpoint(directory: str | Path) -> str:
    """Record a pre-digest checkpoint's digest in its config.json; returns it (for the catalog)."""
    directory = Path(directory)
    doc = read_config(directory / CONFIG_FILE)
    weights = sha256_file(directory / WEIGHTS_FILE)
    doc["weights_sha256"] = weights
    doc["checkpoint_sha256"] = checkpoint_digest(str(doc.get("kind")), doc["config"], weights)
    atomic_write_bytes(directory / CONFIG_FILE, json.dumps(doc, indent=2).encode())
    return doc["checkpoint_sha256"]


def check_bounds(cfg: dict[str, Any], where: str) -> None:
    """Every number in a config is finite and within [0, MAX_CONFIG_INT] for integers."""
    for name, value in cfg.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and not 0 <= value <= MAX_CONFIG_INT:
            msg = (f"{where}: field {name!r} must be in [0, {MAX_CONFIG_INT}]. "
                   f"Got {value} instead.")
            raise ModelError(msg)
        if isinstance(value, float) and not math.isfinite(value):
            raise ModelError(f"{where}: field {name!r} must be finite. Got {value} instead.")


def check_fits_weights(model_cls: type[nn.Module], config: Any, w_path: Path, cfg_path: Path,
                       kind: str) -> None:
    """Build the model on the meta device (no memory) and compare its shapes with the file's."""
    where = f"{cfg_path}: {kind} config"
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in model_cls(config=config).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise ModelError(f"{cfg_path}: invalid {kind} config: {e}") from e
    n = sum(math.prod(s) for s in shapes.values())
    if n > MAX_PARAMS:
        raise ModelError(f"{where}: describes {n} parameters, over the {MAX_PARAMS} limit")
    try:
        with safe_open(str(w_path), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on bad files
        raise ModelError(f"{w_path}: not a readable safetensors file: {e}") from e
    if set(stored) != set(shapes):
        diff = sorted(set(stored) ^ set(shapes))[:3]
        raise ModelError(f"{where}: does not match the weights file (tensors {diff} differ)")
    for k, shape in shapes.items():
        if stored[k] != shape:
            msg = (f"{where}: does not match the weights file: {k} is {list(stored[k])} in "
                   f"the weights, {list(shape)} for this config")
            raise ModelError(msg)


def load_checkpoint(
    directory: str | Path,
    *,
    expected_sha256: str | None = None,
    map_location: str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model exactly from a checkpoint directory.

    Raises:
        ModelError: files missing, JSON invalid, unknown kind or fields, values
            out of bounds or not fitting the weights, or the checkpoint's
            digest differs from `expected_sha256` (the catalog's).
    """
    doc, cfg_path, w_path = read_checkpoint(directory, kinds=REGISTRY,
                                            expected_sha256=expected_sha256)
    kind = doc["kind"]
    model_cls, config_cls = REGISTRY[kind]
    config = checked_config(doc["config"], config_cls, path=cfg_path, kind=kind)
    check_fits_weights(model_cls, config, w_path, cfg_path, kind)
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
    present, the config within its size and nesting limits (`read_config`), a
    `kind` in `kinds`, and the digest of weights and config equal to
    `expected_sha256` when given (`verify_integrity`). Raises ModelError naming
    the file otherwise.
    """
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        msg = f"{directory}: not {what} (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        raise ModelError(msg)
    doc = read_config(cfg_path)
    kinds = sorted(kinds)
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        msg = f"{cfg_path}: unknown model kind {kind!r}; known: {kinds}"
        raise ModelError(msg)
    verify_integrity(directory, doc, expected_sha256)
    return doc, cfg_path, w_path


def checked_config(cfg: dict[str, Any], config_cls: type, *, path: Path, kind: str) -> Any:
    """`config_cls(**cfg)` after refusing unknown fields, wrong JSON types and unbounded values."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    bad = sorted(set(cfg) - set(fields))
    if bad:
        raise ModelError(f"{path}: unknown {kind} config field(s) {bad}")
    _check_types(cfg, fields, f"{path}: {kind} config")
    check_bounds(cfg, f"{path}: {kind} config")
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
