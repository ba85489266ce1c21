"""``train.device`` as a torch device, refused early when this machine or torch build cannot use it."""

from __future__ import annotations

import torch

from mtbert.config.fields import ConfigError


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device; a CUDA device this torch cannot see is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("train.device", f"is {name!r}, but must be auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("train.device", f"is {name!r}, but this torch ({torch.__version__}) sees no CUDA GPU; "
                                              "use auto or cpu")  # fmt: skip
        if device.index is not None and device.index >= count:
            raise ConfigError("train.device", f"is {name!r}, but this torch sees {count} GPU(s): cuda:0 to "
                                              f"cuda:{count - 1}")  # fmt: skip
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:  # a device type this torch build or machine lacks
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("train.device", f"is {name!r}, but this torch cannot use it ({first}); use auto or cpu") from None
    return device
