"""Checkpoint files: the one reader, for every path that reads one (`predict`, `train
ckpt_path=`, `kfold`, `tune-postprocess`, ensembles, the benchmark scripts).

A checkpoint is a file people share and download, so it is read as data, never as code:

1. The file is a regular file and a `torch.save` zip archive (`files.check_readable_file`).
2. Its pickle is disassembled without running it, and every global it names must be in
   `ALLOWED_GLOBALS`: exactly what our Lightning checkpoints hold (dicts, tensors and
   their storages; numbers, text, lists and dicts need no global). A file naming anything
   else (`os.system`, a class of its own) is refused by name before it is unpickled.
3. It is then loaded with `torch.load(weights_only=True)` under that allow-list
   (`torch.serialization.safe_globals`), PyTorch's own restricted unpickler: a second
   wall, which also refuses the pickle opcodes the scan does not resolve.
4. What it holds is validated like any other input (`Checkpoint`): the config
   (`hyper_parameters.config`, through the config's own checks), the post-processing
   chosen at validation (`tuned_postprocess`), and the weights' names, shapes and values
   against the model they go into.

Every failure is a `CheckpointError` (exit 2) on one line naming the file and the key.
"""

from __future__ import annotations

import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, UserError
from ..files import check_readable_file

__all__ = ["ALLOWED_GLOBALS", "Checkpoint", "check_weights", "read_checkpoint", "scan_checkpoint"]

_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
ALLOWED_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",  # state dicts
        "torch._utils._rebuild_tensor_v2",  # every tensor
        "torch._utils._rebuild_parameter",  # an nn.Parameter saved as such
        *(f"torch.{kind}Storage" for kind in _STORAGES),  # the storage of each dtype we train in
    }
)
"""Every pickle global a checkpoint of this package holds (a trained one holds only
`OrderedDict`, `_rebuild_tensor_v2` and the float / long storages; the others cover the
other precisions). Anything else is refused."""

_MAX_PICKLE = 256 << 20  # the pickle part of a checkpoint is metadata; tensors lie beside it


def _allowed_objects() -> list:
    import collections

    objs: list = [collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter]
    return objs + [getattr(torch, f"{kind}Storage") for kind in _STORAGES]


def _globals_named(path: Path, what: str) -> set[str]:
    """The globals the checkpoint's pickle names, found without running it."""
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: not a {what} written by torch.save (no single data.pkl inside)")
            if pickles[0].file_size > _MAX_PICKLE:
                raise CheckpointError(f"{path}: its pickle is {pickles[0].file_size} bytes; a {what} holds far less")
            data = zf.read(pickles[0])
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable {what} (not a torch.save zip archive: {err}); truncated, or another kind of file?"
        ) from None
    names: set[str] = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.add(str(arg).replace(" ", "."))
            elif op.name in ("STACK_GLOBAL", "INST", "OBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
                names.add(f"<pickle opcode {op.name}>")
    except (ValueError, IndexError, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable {what} (damaged pickle: {err})") from None
    return names


def scan_checkpoint(path: str | Path, what: str = "checkpoint") -> Path:
    """Steps 1 and 2 alone (nothing is unpickled): `path` when it is a `torch.save` archive
    whose pickle names only `ALLOWED_GLOBALS`; else a `CheckpointError` naming the file.
    A resume checks `last.ckpt` this way before Lightning loads it (`weights_only=True`)."""
    path = check_readable_file(Path(path), what)
    foreign = sorted(_globals_named(path, what) - ALLOWED_GLOBALS)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CheckpointError(
            f"{path}: refused: it holds {shown}, which no hrnet_sweep {what} holds (only tensors, numbers, "
            "text, lists and dicts); nothing in it was run"
        )
    return path


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """The content of a checkpoint file, read as data (see the module's steps 1-3).

    Raises:
        CheckpointError: naming the file, when it is missing, not a `torch.save` archive,
            truncated, or names a global outside `ALLOWED_GLOBALS` (nothing in it runs).
    """
    path = scan_checkpoint(path, what)
    try:
        with torch.serialization.safe_globals(_allowed_objects()):
            doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: not a readable {what} ({type(err).__name__}: {first[:200]})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: not a {what}: it holds a {type(doc).__name__}, not a dict")
    return doc


# ----------------------------------------------------------------------------- what it holds


@dataclass
class Checkpoint:
    """A training checkpoint of this package, read and checked: `read_checkpoint`, then
    each part validated when it is asked for, with errors naming the file and the key."""

    path: Path
    doc: dict

    @classmethod
    def read(cls, path: str | Path) -> Checkpoint:
        return cls(Path(path), read_checkpoint(path))

    def config(self):
        """The config the checkpoint was trained with (`hyper_parameters.config`), with
        `models.pretrained=false` (the weights come from the checkpoint)."""
        from ..config import config_from_dict

        hp = self.doc.get("hyper_parameters")
        cfg = hp.get("config") if isinstance(hp, Mapping) else None
        if not isinstance(cfg, Mapping) or not isinstance(cfg.get("models"), Mapping):
            raise CheckpointError(
                f"{self.path}: no hrnet_sweep config inside (hyper_parameters.config); was it written by "
                "hrnet_sweep train?"
            )
        doc = {**cfg, "models": {**cfg["models"], "pretrained": False}}
        try:
            return config_from_dict(doc, f"{self.path}: hyper_parameters.config")
        except UserError as err:
            raise CheckpointError(str(err)) from None

    def tuned_postprocess(self) -> dict | None:
        """The post-processing chosen at the checkpoint's validation epoch, checked, or None."""
        from ..config import PostprocessConfig
        from .validation import CHECKPOINT_KEY, PARAMS

        tuned = self.doc.get(CHECKPOINT_KEY)
        if tuned is None:
            return None
        if not isinstance(tuned, Mapping):
            raise CheckpointError(f"{self.path}: {CHECKPOINT_KEY} is a {type(tuned).__name__}, not a mapping")
        for key in PARAMS:
            value = tuned.get(key)
            ok = isinstance(value, bool) if key == "use_polygon" else _finite(value)
            if not ok:
                raise CheckpointError(f"{self.path}: {CHECKPOINT_KEY}.{key}={value!r}: not a valid setting")
        try:
            PostprocessConfig.model_validate({k: tuned[k] for k in PARAMS})
        except Exception as err:
            first = str(err).splitlines()
            raise CheckpointError(f"{self.path}: {CHECKPOINT_KEY}: {' '.join(first[1:3]).strip()}") from None
        if tuned.get("hmean") is not None and not _finite(tuned.get("hmean")):
            raise CheckpointError(f"{self.path}: {CHECKPOINT_KEY}.hmean={tuned.get('hmean')!r}: not a finite number")
        return dict(tuned)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The network's weights, named as the model names them: a Lightning checkpoint's
        `state_dict` (`model.` and `torch.compile`'s `_orig_mod.` taken off), or a plain
        state dict (`ckpt_path=` takes one)."""
        state = self.doc.get("state_dict", self.doc)
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{self.path}: state_dict is a {type(state).__name__}, not a mapping of weights")
        if "state_dict" in self.doc and any(str(k).startswith("model.") for k in state):
            state = {k: v for k, v in state.items() if str(k).startswith("model.")}
        out = {}
        for k, v in state.items():
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"{self.path}: state_dict.{k} is a {type(v).__name__}, not a tensor")
            out[str(k).removeprefix("model.").removeprefix("_orig_mod.")] = v
        if not out:
            raise CheckpointError(f"{self.path}: no weights inside (state_dict is empty)")
        return out


def _finite(value: Any) -> bool:
    import math

    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_weights(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module, path: str | Path, *, describe: str = ""
) -> list[str]:
    """Check `state` against `model` before loading it: every weight of the model present,
    of the model's shape, and finite. Returns the names the model does not have (the
    caller warns or refuses); raises a `CheckpointError` naming the file and the weight.

    `model` may live on the meta device (shapes only): then no memory is spent on it.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} of the model's {len(own)} weights are missing, e.g. {missing[0]}"
            f"{describe}: a checkpoint of another model?"
        )
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: weight {k} has shape {tuple(state[k].shape)}, the model{describe} expects "
            f"{tuple(own[k].shape)} ({len(wrong)} weights differ: a checkpoint of another backbone or decoder?)"
        )
    for k in own:
        t = state[k]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: weight {k} holds NaN or infinite values")
    return [k for k in state if k not in own]
