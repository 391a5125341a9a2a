"""Weight initialisation schemes (``torch.nn.init``) for conv and linear layers."""

from __future__ import annotations

from torch import nn

INIT_SCHEMES = (
    "default",
    "kaiming_normal",
    "kaiming_uniform",
    "xavier_normal",
    "xavier_uniform",
    "orthogonal",
    "sparse",
)


def init_weights(model: nn.Module, scheme: str = "default", sparsity: float = 0.1) -> nn.Module:
    """Initialise every conv/linear weight of ``model`` with ``scheme`` (biases 0); norm layers get
    weight 1 and bias 0. ``default`` leaves PyTorch's own initialisation untouched.

    ``kaiming_*`` use fan-out for convolutions and fan-in for linear layers (He et al., ReLU gain);
    ``sparse`` zeroes a ``sparsity`` fraction of each column (2-D views of conv kernels) and draws the
    rest from N(0, 0.01).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; expected one of {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return model
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d | nn.Linear):
            w = m.weight
            if scheme == "kaiming_normal":
                mode = "fan_out" if not isinstance(m, nn.Linear) else "fan_in"
                nn.init.kaiming_normal_(w, mode=mode, nonlinearity="relu")
            elif scheme == "kaiming_uniform":
                mode = "fan_out" if not isinstance(m, nn.Linear) else "fan_in"
                nn.init.kaiming_uniform_(w, mode=mode, nonlinearity="relu")
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(w)
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(w)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(w)
            elif scheme == "sparse":
                flat = w.data.view(w.shape[0], -1)
                nn.init.sparse_(flat, sparsity=sparsity, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    return model
