"""Parent checkpoints: inspect them cheaply, check they can be merged, then load their tensors.

`inspect_parent` reads only config.json and the safetensors headers, so a missing folder, a
truncated file or an incompatible shape is reported before a single tensor is read. `load_parent`
then reads the weights (single or sharded safetensors; a PEFT LoRA adapter is merged into its
base). Pickled `.bin` weights and `trust_remote_code` are refused unless asked for explicitly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from evomerge.errors import ParentError
from evomerge.files import LINEAGE_FILE

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# Floating dtypes as safetensors headers name them, and as torch and recipes do.
_FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
# `transformer.h.7.` (GPT-2), `model.layers.7.`, and GPT-2 checkpoints saved without the prefix (`h.7.`).
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)\.")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


@dataclass
class ParentInfo:
    """What a checkpoint declares, read without loading weights."""

    name: str  # the reference as the user wrote it; recipes name parents by it
    path: Path
    config: dict
    shapes: dict[str, tuple[int, ...]]  # tensor name → shape, in file order
    dtypes: dict[str, str]
    weight_files: list[Path]
    adapter_base: Optional["ParentInfo"] = None  # set for a LoRA adapter folder

    @property
    def architecture(self) -> str:
        return (self.config.get("architectures") or [self.config.get("model_type", "?")])[0]

    @property
    def num_layers(self) -> int:
        """Decoder layers, from the config (`num_hidden_layers`, GPT-2's `n_layer`, …), else counted
        from the tensor names."""
        for config in (self.config, self.config.get("text_config") or {}):
            for key in LAYER_COUNT_KEYS:
                if config.get(key):
                    return int(config[key])
        layers = {layer_index(name) for name in self.shapes} - {None}
        return max(layers) + 1 if layers else 0

    @property
    def tokenizer_dir(self) -> Path:
        """The folder with this parent's tokenizer: its own, or its base's for an adapter without one."""
        own = any((self.path / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model"))
        return self.adapter_base.path if self.adapter_base is not None and not own else self.path

    @property
    def parameter_count(self) -> int:
        """Parameters declared by the checkpoint's headers (no weights read)."""
        return sum(math.prod(shape) for shape in self.shapes.values())

    @property
    def stored_dtype(self) -> str:
        """The name of the dtype of its first floating-point tensor (what mergekit would keep)."""
        for dtype in self.dtypes.values():
            name = dtype.replace("torch.", "")
            name = _FLOAT_DTYPES.get(name, name)
            if name in _FLOAT_DTYPES.values():
                return name
        return "float32"

    @property
    def lineage(self) -> Optional[dict]:
        lineage_path = self.path / LINEAGE_FILE
        return json.loads(lineage_path.read_text()) if lineage_path.is_file() else None


@dataclass
class Parent:
    """A loaded parent: its tensors (on `device`, in `dtype`) and where it came from."""

    info: ParentInfo
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def path(self) -> Path:
        return self.info.path


def layer_index(tensor_name: str) -> Optional[int]:
    """The decoder layer a tensor belongs to (`model.layers.7.mlp…` → 7), None outside the layers."""
    match = _LAYER_INDEX.search(tensor_name)
    return int(match.group(1)) if match else None


def with_layer_index(tensor_name: str, index: int) -> str:
    """The same tensor in decoder layer `index` (`model.layers.7.mlp…`, 2 → `model.layers.2.mlp…`)."""
    match = _LAYER_INDEX.search(tensor_name)
    if match is None:
        raise ValueError(f"{tensor_name} is not in a decoder layer")
    return tensor_name[: match.start(1)] + str(index) + tensor_name[match.end(1) :]


def inspect_parent(reference: Union[str, Path], *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ParentInfo:
    """Read a checkpoint's config and tensor headers; raise ParentError on anything unusable."""
    path = Path(reference).expanduser()
    name = str(reference)
    if not path.exists():
        raise ParentError(f"parent not found: {reference}")
    if not path.is_dir():
        raise ParentError(f"parent is not a folder: {reference}")
    if (path / ADAPTER_CONFIG).is_file():
        return _inspect_adapter(path, name, allow_pickle, trust_remote_code)

    config = _read_json(path / "config.json", f"{path} has no config.json (not a Hugging Face checkpoint)")
    if config.get("auto_map") and not trust_remote_code:
        raise ParentError(f"{path} needs custom code (auto_map in config.json); pass --trust-remote-code to allow it")
    weight_files = _weight_files(path, allow_pickle)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for weight_file in weight_files:
        if weight_file.suffix == ".bin":
            for tensor_name, tensor in _load_pickle(weight_file).items():
                shapes[tensor_name], dtypes[tensor_name] = tuple(tensor.shape), str(tensor.dtype)
            continue
        for tensor_name, (shape, dtype) in _safetensors_header(weight_file).items():
            shapes[tensor_name], dtypes[tensor_name] = shape, dtype
    if not shapes:
        raise ParentError(f"{path}: the weight files hold no tensors")
    return ParentInfo(name, path, config, shapes, dtypes, weight_files)


FINGERPRINT_SAMPLES = 4  # evenly spaced 64 KiB reads per weight file, beside its size and header
FINGERPRINT_SAMPLE_BYTES = 1 << 16


def fingerprint(info: ParentInfo) -> str:
    """What identifies a parent's weights cheaply (no full read, whatever the size): its config,
    and per weight file its size, its start (the header) and a few evenly spaced samples of its bytes. Two
    trainings of one architecture share sizes and headers but not a single sampled byte."""
    digest = hashlib.sha256(json.dumps(info.config, sort_keys=True).encode())
    if info.adapter_base is not None:
        digest.update(fingerprint(info.adapter_base).encode())
    for weight_file in info.weight_files:
        size = weight_file.stat().st_size
        digest.update(f"{weight_file.name}:{size}".encode())
        with open(weight_file, "rb") as handle:
            for index in range(FINGERPRINT_SAMPLES + 1):
                handle.seek(0 if index == 0 else max(0, size * index // FINGERPRINT_SAMPLES - FINGERPRINT_SAMPLE_BYTES))
                digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def check_parents(infos: Sequence[ParentInfo], minimum: int = 2, *, vocabularies_may_differ: bool = False) -> None:
    """Refuse parents that cannot be merged tensor by tensor (and fewer than `minimum`: one
    parent is enough for a passthrough recipe that restacks its layers). `vocabularies_may_differ`:
    embedding and lm_head rows (tokens) may differ, for a merge that lays them out in one merged
    vocabulary (a recipe's `tokenizer` setting)."""
    if len(infos) < minimum:
        raise ParentError("a merge needs at least two parents" if minimum == 2 else f"a merge needs at least {minimum} parent(s)")
    first = infos[0]
    for other in infos[1:]:
        if other.architecture != first.architecture:
            raise ParentError(f"parents have different architectures: {first.name} is {first.architecture}, {other.name} is {other.architecture}")
        missing = [n for n in first.shapes if n not in other.shapes]
        extra = [n for n in other.shapes if n not in first.shapes]
        if missing or extra:
            example = (missing or extra)[0]
            raise ParentError(
                f"parents have different tensors: {example} is in {first.name if missing else other.name} only ({len(missing) + len(extra)} differ)"
            )
        for tensor_name, shape in first.shapes.items():
            if other.shapes[tensor_name] != shape:
                hint = ""
                vocabulary_tensor = any(part in tensor_name for part in ("embed", "lm_head", "wte"))
                if vocabulary_tensor and other.shapes[tensor_name][:1] != shape[:1]:  # rows are tokens
                    if vocabularies_may_differ and other.shapes[tensor_name][1:] == shape[1:]:
                        continue
                    hint = " (different vocabularies: merge them in one with `tokenizer: {source: union}` in a recipe or `--tokenizer union` in a search)"
                raise ParentError(
                    f"parents differ in shape at {tensor_name}: {first.name} {list(shape)} vs {other.name} {list(other.shapes[tensor_name])}{hint}"
                )


def load_parent(info: ParentInfo, *, dtype: Optional[torch.dtype] = None, device: Union[str, torch.device] = "cpu") -> Parent:
    """Load an inspected parent's tensors, cast to `dtype` if given, on `device`."""
    if info.adapter_base is not None:
        tensors = _merge_adapter(info)
        require_finite(tensors, info.path)
    else:
        tensors = {}
        for weight_file in info.weight_files:
            loaded = _load_weight_file(weight_file)
            require_finite(loaded, weight_file)
            tensors.update(loaded)
    for tensor_name, tensor in tensors.items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[tensor_name] = tensor.to(device).contiguous()
    return Parent(info, tensors)


# ----- helpers ----------------------------------------------------------------------------


def check_finite(info: ParentInfo) -> None:
    """Read a parent's weights one tensor at a time and refuse NaN or inf, naming the file and the
    tensor: for a caller that must refuse bad weights before it creates anything (a search, before
    its study exists), without holding them all in memory."""
    if info.adapter_base is not None:
        check_finite(info.adapter_base)
    for weight_file in info.weight_files:
        if weight_file.suffix == ".bin":
            require_finite(_load_pickle(weight_file), weight_file)
            continue
        from safetensors import safe_open

        with safe_open(str(weight_file), framework="pt") as handle:
            for tensor_name in handle.keys():
                require_finite({tensor_name: handle.get_tensor(tensor_name)}, weight_file)


def require_finite(tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights holding NaN or inf: every merge of them would score nothing, quietly."""
    for tensor_name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ParentError(f"{source}: tensor {tensor_name} holds NaN or infinite values")


def _read_json(path: Path, missing_message: str) -> dict:
    if not path.is_file():
        raise ParentError(missing_message)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ParentError(f"{path}: not valid JSON ({error})") from None


def _weight_files(path: Path, allow_pickle: bool) -> list[Path]:
    if (path / SHARD_INDEX).is_file():
        index = _read_json(path / SHARD_INDEX, "")
        names = sorted(set((index.get("weight_map") or {}).values()))
        if not names:
            raise ParentError(f"{path / SHARD_INDEX}: empty weight_map")
        files = [path / name for name in names]
        for shard in files:
            if not shard.is_file():
                raise ParentError(f"{path}: shard {shard.name} listed in {SHARD_INDEX} is missing")
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    if (path / PICKLE_FILE).is_file():
        if not allow_pickle:
            raise ParentError(f"{path} has only pickled weights ({PICKLE_FILE}); convert to safetensors or pass --allow-pickle")
        return [path / PICKLE_FILE]
    raise ParentError(f"{path} has no weights ({SINGLE_FILE} or {SHARD_INDEX})")


def _safetensors_header(weight_file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor shapes and dtypes from the header; safetensors checks the file covers them all."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weight_file), framework="pt") as handle:
            result = {}
            for tensor_name in handle.keys():
                view = handle.get_slice(tensor_name)
                result[tensor_name] = (tuple(view.get_shape()), view.get_dtype())
            return result
    except SafetensorError as error:
        raise ParentError(f"{weight_file}: corrupt or truncated safetensors file ({error})") from None


def _load_weight_file(weight_file: Path) -> dict[str, torch.Tensor]:
    if weight_file.suffix == ".bin":
        return _load_pickle(weight_file)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weight_file))
    except SafetensorError as error:
        raise ParentError(f"{weight_file}: corrupt or truncated safetensors file ({error})") from None


def _load_pickle(weight_file: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(weight_file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad pickle
        raise ParentError(f"{weight_file}: cannot read pickled weights ({error})") from None


def _inspect_adapter(path: Path, name: str, allow_pickle: bool, trust_remote_code: bool) -> ParentInfo:
    adapter = _read_json(path / ADAPTER_CONFIG, "")
    base_ref = adapter.get("base_model_name_or_path")
    if not base_ref:
        raise ParentError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path")
    base_path = Path(base_ref)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = (path / base_ref).resolve()  # relative to the adapter folder
    if not base_path.is_dir():
        raise ParentError(f"LoRA adapter {path}: its base model {base_ref} is not a local folder")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ParentError(f"LoRA adapter {path} has no {ADAPTER_WEIGHTS}")
    _safetensors_header(path / ADAPTER_WEIGHTS)  # fails early on a truncated adapter
    base = inspect_parent(base_path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return ParentInfo(name, path, base.config, dict(base.shapes), dict(base.dtypes), [path / ADAPTER_WEIGHTS], adapter_base=base)


def _merge_adapter(info: ParentInfo) -> dict[str, torch.Tensor]:
    """Merge a LoRA adapter into its base with peft itself, so the result is exactly peft's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_info = info.adapter_base
    model = AutoModelForCausalLM.from_pretrained(str(base_info.path), dtype="auto")
    model = PeftModel.from_pretrained(model, str(info.path)).merge_and_unload()
    merged = model.state_dict()
    # Keep the base checkpoint's tensor names (a tied lm_head absent from the files stays absent).
    return {tensor_name: merged[tensor_name].detach().clone() for tensor_name in base_info.shapes}
