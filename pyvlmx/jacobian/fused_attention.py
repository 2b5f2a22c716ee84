"""Route a model's attention through the fused multi-tangent JVP op while JVPs run.

``torch.func.jvp`` over scaled-dot-product attention differentiates the math
path op by op: every tangent forms its own (B, H, N, M) score tangent and
softmax tangent.  :func:`pyvlmx.ops.attention_jvp` computes the primal
softmax once and pushes T tangents through it (2 + 4T block matmuls instead
of about 6T).  :func:`fused_attention` makes a model use it:

* every call of ``torch.nn.functional.scaled_dot_product_attention`` goes
  through :class:`FusedAttentionJvp`, an ``autograd.Function`` whose
  ``forward`` is the math SDPA and whose ``jvp`` is ``ops.attention_jvp``
  with T = 1.  Under ``torch.func.vmap`` over ``torch.func.jvp`` (what
  :meth:`JacobianOperator.matvec` does) the ``jvp`` sees tangents batched
  over the vmapped dimension, and the op's ``register_vmap`` rule folds that
  dimension into T: one kernel call per attention layer for all tangents;
* this covers open_clip (``nn.MultiheadAttention`` in its residual blocks,
  through ``F.multi_head_attention_forward``, and its own ``Attention``),
  ImageBind (a subclass of ``nn.MultiheadAttention``) and Hugging Face
  CLIP/SigLIP, whose ``"eager"`` attention is switched to ``"sdpa"`` for the
  duration (the same function of the inputs);
* calls the op cannot take (dropout, grouped-query attention, inputs that are
  not (B, H, N, E)) keep the math path and are counted apart.

The patch is process-wide while the context is open (one thread of model
evaluation is assumed, as in the rest of pyvlmx) and is undone on exit.  The
route has no backward: it is used for forward-mode products only.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F

_WARNED = False
#: the SDPA function the fused route computes primals with (captured before any patch)
_MATH_SDPA = F.scaled_dot_product_attention


def fused_available() -> bool:
    """True when the compiled ``pyvlmx::attention_jvp`` op is registered."""
    from pyvlmx import ops

    return hasattr(ops, "attention_jvp") and ops.compiled("attention_jvp")


def warn_unavailable() -> None:
    """Warn once per process that the fused JVP route serves as the math route."""
    global _WARNED
    if _WARNED:
        return
    _WARNED = True
    from pyvlmx._ext import REBUILD_HINT

    warnings.warn("jvp_backend='fused': the compiled op pyvlmx::attention_jvp is not built, so attention "
                  "JVPs use the math route (torch.func over math SDPA); rebuild the extension with: "
                  f"{REBUILD_HINT}", RuntimeWarning, stacklevel=3)


class FusedAttentionJvp(torch.autograd.Function):
    """Math SDPA forward, fused ``ops.attention_jvp`` forward-mode derivative.

    Inputs ``(q, k, v, attn_mask, is_causal, scale)`` with q (B, H, N, E),
    k (B, H, M, E), v (B, H, M, Ev); returns (B, H, N, Ev).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, attn_mask, is_causal, scale):
        return _MATH_SDPA(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, attn_mask, is_causal, scale = inputs
        ctx.save_for_forward(q, k, v)
        ctx.attn_mask = attn_mask
        ctx.is_causal = is_causal
        ctx.scale = scale

    @staticmethod
    def jvp(ctx, tq, tk, tv, _tmask, _tcausal, _tscale):
        from pyvlmx import ops

        q, k, v = ctx.saved_tensors
        tq = torch.zeros_like(q) if tq is None else tq
        tk = torch.zeros_like(k) if tk is None else tk
        tv = torch.zeros_like(v) if tv is None else tv
        _, tout = ops.attention_jvp(q, k, v, tq.unsqueeze(0), tk.unsqueeze(0), tv.unsqueeze(0),
                                    scale=ctx.scale, attn_mask=ctx.attn_mask, is_causal=ctx.is_causal)
        return tout.squeeze(0)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("FusedAttentionJvp: the fused attention route is forward-mode only; "
                           "reverse-mode products run outside pyvlmx.jacobian.fused_attention")


class FusedAttentionRoute:
    """State of one :func:`fused_attention` context: counters of the calls seen.

    Attributes:
        fused: SDPA calls that went through :class:`FusedAttentionJvp`.
        math: SDPA calls that kept the math path (dropout, GQA, other ranks).
    """

    def __init__(self):
        self.fused = 0
        self.math = 0

    def sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        orig = _MATH_SDPA
        ok = (dropout_p == 0.0 and not enable_gqa and query.dim() == 4 and key.dim() == 4 and value.dim() == 4
              and key.shape[:2] == query.shape[:2] and value.shape[:2] == query.shape[:2]
              and query.dtype == key.dtype == value.dtype and query.shape[-1] >= 1 and key.shape[-2] >= 1)
        if not ok:
            self.math += 1
            return orig(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, enable_gqa=enable_gqa)
        if attn_mask is not None and attn_mask.dtype != torch.bool and attn_mask.dtype != query.dtype:
            attn_mask = attn_mask.to(query.dtype)
        s = float(scale) if scale is not None else 1.0 / math.sqrt(query.shape[-1])
        self.fused += 1
        return FusedAttentionJvp.apply(query, key, value, attn_mask, bool(is_causal), s)

    def __repr__(self) -> str:
        return f"FusedAttentionRoute(fused={self.fused}, math={self.math})"


def has_eager_hf_attention(model) -> bool:
    """True when the model holds Hugging Face attention configured as "eager" (routed as "sdpa")."""
    return bool(_hf_configs(model))


def _hf_configs(model) -> list:
    """Hugging Face configs reachable from the model's modules whose attention is "eager"."""
    if not isinstance(model, torch.nn.Module):
        return []
    seen, out = set(), []
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation"):
            continue
        seen.add(id(cfg))
        if getattr(cfg, "_attn_implementation", None) == "eager":
            out.append(cfg)
    return out


@contextlib.contextmanager
def fused_attention(model: torch.nn.Module | None = None, *, hf_eager: bool = True
                    ) -> Iterator[FusedAttentionRoute]:
    """Send scaled-dot-product attention through :class:`FusedAttentionJvp` inside the block.

    Args:
        model: the model (its Hugging Face configs, if any, are switched
            from "eager" to "sdpa" attention for the block); None patches only
            the SDPA function.
        hf_eager: switch "eager" Hugging Face attention to "sdpa" (default);
            False leaves it, so that a forward inside the block is bit-identical
            to one outside (eager computes its softmax in float32).

    Yields:
        a :class:`FusedAttentionRoute` whose ``fused`` / ``math`` count the
        attention calls made inside the block.

    Example:
        >>> from pyvlmx.models import analysis_mode, load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> with torch.no_grad(), analysis_mode(m), fused_attention(m) as route:
        ...     _ = m.encode_image(torch.rand(1, 3, 32, 32))
        >>> route.fused          # one call per attention layer of the image tower
        2
    """
    route = FusedAttentionRoute()
    prev = F.scaled_dot_product_attention
    configs = _hf_configs(model) if hf_eager else []
    F.scaled_dot_product_attention = route.sdpa
    try:
        for cfg in configs:
            cfg._attn_implementation = "sdpa"
        yield route
    finally:
        F.scaled_dot_product_attention = prev
        for cfg in configs:
            cfg._attn_implementation = "eager"
