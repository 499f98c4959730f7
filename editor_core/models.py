"""Loading a causal LM from a local directory, choosing a device, and fingerprinting the weights.

Nothing here downloads: every load is ``local_files_only``. The fingerprint lets an editor
checkpoint or a stored delta refuse a base model it was not made for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` means the first CUDA GPU when one is present, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``auto``: bf16 on a GPU (edited modules keep fp32 masters), fp32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Right padding and a pad token: batched teacher forcing needs both."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    path: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a Hugging Face causal LM and its tokenizer from a local directory, in eval mode."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch_dtype)
    model.to(dev).eval()
    model.requires_grad_(False)
    return model, prepare_tokenizer(tokenizer)


def model_fingerprint(model: nn.Module, as_dtype: torch.dtype | None = None) -> str:
    """A short hash of the architecture and of every parameter's bits.

    Hashing all weights costs one pass over memory; it runs once per load, and makes a mismatch
    between an editor/delta and its base model impossible to miss. ``as_dtype``: the fingerprint
    the model would have if loaded in that dtype (a delta records the base the service loaded,
    bf16 on a GPU; an export loads it in fp32), cast tensor by tensor, with no second copy.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(str(getattr(config, "model_type", "")).encode())
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        cast = param if as_dtype is None or not param.is_floating_point() else param.to(as_dtype)
        digest.update(tensor_bytes(cast))
    return digest.hexdigest()[:16]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor (any dtype, any device), for hashing.

    A buffer over the (CPU, contiguous) tensor's own memory: hashing the edited weights at every
    version would otherwise copy them once more (57 MB for a 12-layer GPT-2's upper half).
    """
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).cpu().numpy())
