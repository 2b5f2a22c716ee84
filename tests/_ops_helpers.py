"""Shared helpers of the tests/test_ops_*.py files (kernels engineer)."""

import pytest
import torch

from pyvlmx import ops

OPS = torch.ops.pyvlmx if ops.compiled("projected_step") else None


def requires(name: str):
    """Skip unless the compiled op torch.ops.pyvlmx.<name> is registered."""
    return pytest.mark.skipif(not ops.compiled(name),
                              reason=f"compiled op pyvlmx::{name} not built")


def opcheck(op, args, kwargs=None):
    """torch.library.opcheck with the standard test utils; raises on failure."""
    torch.library.opcheck(op, args, kwargs or {})


def lowp_ok(kernel: torch.Tensor, ref_lowp: torch.Tensor, exact: torch.Tensor, slack: float = 0.0):
    """flash-attention's rule: kernel error at most 2x the reference's error in that dtype."""
    k_err = (kernel.double() - exact.double()).abs().max().item()
    r_err = (ref_lowp.double() - exact.double()).abs().max().item()
    assert k_err <= 2 * r_err + slack, f"kernel error {k_err} > 2 x reference error {r_err}"
