"""Continuous batching and the certified mixed-precision search (pyvlmx.attacks.engine.SlotLoop).

A pair's record must not depend on which pairs share its batch; every
reported success must hold for an fp32 forward of the saved 8-bit image.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import needs_cuda
from pyvlmx.attacks import EmbeddingAlignment
from pyvlmx.attacks.engine import Job, JobQueue, SlotLoop
from pyvlmx.attacks.precision import encode_blocks
from pyvlmx.attacks.precision import Precision, resolve_precision
from pyvlmx.models import VisionLanguageModel

EPS = 32 / 255
TINY = {"eps": EPS, "rel_step": 1 / 16, "max_steps": 40, "errors": "record"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny shapes: one thread is fastest."""


@pytest.fixture(scope="module")
def setup(tiny_clip):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(10, 3, 32, 32, generator=g) * 255).round() / 255
    W = torch.nn.functional.normalize(torch.randn(5, tiny_clip.embed_dim, generator=g), dim=1)
    with torch.no_grad():
        pred = (tiny_clip.encode_image(x) @ W.t()).argmax(1)
    return x, W, (pred + 1) % 5


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


@pytest.mark.parametrize("opts", [{}, {"optimizer": "adam"}, {"random_start": True},
                                  {"minimal": "bisect", "eps_schedule": (8 / 255, 32 / 255), "bisect_steps": 2}])
def test_records_do_not_depend_on_the_order_or_the_companions(tiny_clip, setup, opts):
    x, W, tc = setup
    atk = EmbeddingAlignment(tiny_clip, **dict(TINY, **opts))
    kw = dict(target_classes=tc, class_weights=W, seeds=list(range(50, 60)), schedule="continuous", batch_size=3)
    first = atk.run(x, **kw)
    order = list(range(10))
    random.Random(1).shuffle(order)
    again = atk.run(x, order=order, **kw)
    assert _strip(first.records) == _strip(again.records)
    assert torch.equal(first.images, again.images)
    # a different slot count changes the shapes, not the search: the same decisions
    fixed = atk.run(x, target_classes=tc, class_weights=W, seeds=list(range(50, 60)))
    for a, b in zip(first.records, fixed.records):
        assert (a["success"], a["steps"], a["reason"], a["eps"], a["rounds"]) == \
            (b["success"], b["steps"], b["reason"], b["eps"], b["rounds"])
    assert sum(r["success"] for r in first.records) >= 8


def test_slots_are_reused_and_never_exceed_the_batch(tiny_clip, setup):
    x, W, tc = setup
    atk = EmbeddingAlignment(tiny_clip, **TINY)
    parts_seen = []
    orig = SlotLoop.step

    def step(self):
        parts_seen.append((self.busy, self.entered))
        return orig(self)

    SlotLoop.step = step
    try:
        res = atk.run(x, target_classes=tc, class_weights=W, schedule="continuous", batch_size=3)
    finally:
        SlotLoop.step = orig
    assert max(b for b, _ in parts_seen) <= 3
    entered = sum(e for _, e in parts_seen[1:]) + 0
    assert entered == 10  # every sample took a slot exactly once (plain search: one round each)
    assert len(res.records) == 10


def test_the_fixed_schedule_refills_only_a_drained_batch(tiny_clip, setup, monkeypatch):
    """The fixed schedule is the same loop refilled only when every slot is free: each round of a
    minimal-budget search enters an empty batch, where continuous batching refills a busy one."""
    x, W, tc = setup
    fills = []
    orig = SlotLoop._fill

    def fill(self):
        busy = self.busy
        orig(self)
        if self.entered:
            fills.append((self.refill, busy, self.entered))

    monkeypatch.setattr(SlotLoop, "_fill", fill)
    atk = EmbeddingAlignment(tiny_clip, **dict(TINY, minimal="escalate", eps_schedule=(1 / 255, 4 / 255, 32 / 255)))
    fixed = atk.run(x, target_classes=tc, class_weights=W)
    drained = [f for f in fills if f[0] == "drain"]
    assert len(drained) >= 2 and all(busy == 0 for _, busy, _ in drained)
    assert drained[0][2] == 10  # the first round: the whole batch
    assert sum(n for *_, n in drained) == sum(r["rounds"] for r in fixed.records)
    fills.clear()
    cont = atk.run(x, target_classes=tc, class_weights=W, schedule="continuous", batch_size=3)
    assert any(busy > 0 for _, busy, _ in fills)
    assert [r["rounds"] for r in cont.records] == [r["rounds"] for r in fixed.records]


def test_encode_blocks_is_the_same_whatever_the_other_rows(tiny_clip, setup):
    x, _, _ = setup
    with torch.no_grad():
        a = encode_blocks(tiny_clip.encode_image, x[:5], 4)
        b = encode_blocks(tiny_clip.encode_image, torch.cat([x[:5], x.flip(0)[:5]]), 4)[:5]
        c = encode_blocks(tiny_clip.encode_image, x[:5][[4, 3, 2, 1, 0]], 4).flip(0)
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-6)


def test_bf16_search_is_certified_by_an_fp32_forward_of_the_saved_image(tiny_clip, setup):
    from pyvlmx.attacks import targeted_success

    x, W, tc = setup
    res = EmbeddingAlignment(tiny_clip, precision="bf16", **TINY).run(
        x, target_classes=tc, class_weights=W, schedule="continuous", batch_size=4)
    assert {r["search_precision"] for r in res.records} == {"bf16"}
    assert [r["certified"] for r in res.records] == [r["success"] for r in res.records]
    assert sum(r["success"] for r in res.records) >= 8
    assert torch.equal((res.images * 255).round() / 255, res.images)  # the saved 8-bit image
    with torch.no_grad():
        fp32 = tiny_clip.encode_image(res.images)
    ok = targeted_success(fp32, W, tc)
    assert ok.tolist() == [r["success"] for r in res.records]
    assert torch.allclose(res.embeddings, fp32, atol=1e-6)


class _LyingSearch(EmbeddingAlignment):
    """A search forward that claims every image already is its target: the fp32 check must refuse it."""

    def make_precision(self, device):
        W, tc = self._lie

        def search(z):
            return self.model.encode_image(z) * 0.0 + W[tc][: z.shape[0]]

        return Precision(self.model.encode_image, "bf16", device, search_encode=search)


@pytest.mark.parametrize("schedule", ["fixed", "continuous"])
def test_a_search_success_the_fp32_check_rejects_is_not_reported(tiny_clip, setup, schedule):
    x, W, tc = setup
    atk = _LyingSearch(tiny_clip, **dict(TINY, max_steps=3))
    atk._lie = (W, tc[:4])
    res = atk.run(x[:4], target_classes=tc[:4], class_weights=W, schedule=schedule,
                  batch_size=4 if schedule == "continuous" else None)
    assert [r["success"] for r in res.records] == [False] * 4
    assert [r["certified"] for r in res.records] == [False] * 4
    assert [r["reason"] for r in res.records] == ["step limit"] * 4
    assert [r["steps"] for r in res.records] == [3] * 4


def test_precision_resolution_names_the_device():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision 'tf32' is a CUDA tensor-core mode; the images are on cpu"):
        resolve_precision("tf32", "cpu")
    with pytest.raises(ValueError, match="precision must be one of .* got 'half'"):
        resolve_precision("half", "cpu")


def test_bad_schedule_options_are_refused_before_any_work(tiny_clip, setup):
    x, W, tc = setup
    atk = EmbeddingAlignment(tiny_clip, **TINY)
    with pytest.raises(ValueError, match="schedule must be 'fixed' or 'continuous', got 'slots'"):
        atk.run(x, target_classes=tc, class_weights=W, schedule="slots")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        atk.run(x, target_classes=tc, class_weights=W, schedule="continuous", batch_size=0)
    with pytest.raises(ValueError, match="give schedule='continuous' for 4 slots"):
        atk.run(x, target_classes=tc, class_weights=W, batch_size=4)
    with pytest.raises(ValueError, match="order must be a permutation of 0..9"):
        atk.run(x, target_classes=tc, class_weights=W, schedule="continuous", batch_size=2, order=[0] * 10)


def test_sweep_schedule_reaches_the_config_and_both_give_the_same_pairs(tiny_clip, tmp_path):
    from pyvlmx.data import load_dataset
    from pyvlmx.systematic import load_records, run_sweep

    ds = load_dataset("samples", tiny_clip.image_size)
    common = dict(eps=EPS, rel_step=1 / 16, max_steps=30, targets=1, batch_size=4, max_images=6, progress=False)
    run_sweep(tiny_clip, ds, tmp_path / "c", schedule="continuous", **common)
    run_sweep(tiny_clip, ds, tmp_path / "f", schedule="fixed", **common)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (cfg["schedule"], cfg["fixed_shapes"]) == ("continuous", True)
    assert json.loads((tmp_path / "f" / "config.json").read_text())["schedule"] == "fixed"
    a, b = load_records(tmp_path / "c"), load_records(tmp_path / "f")
    keys = ("pair_id", "success", "steps", "reason", "pred_after")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert [r["psnr"] for r in a] == pytest.approx([r["psnr"] for r in b], abs=1e-4)
    with pytest.raises(ValueError, match="schedule must be one of \\['continuous', 'fixed'\\], got 'chunks'"):
        run_sweep(tiny_clip, ds, tmp_path / "x", schedule="chunks", **common)


@needs_cuda
def test_a_step_does_not_synchronise_with_the_host():
    from pyvlmx.attacks.objective import Objective
    from pyvlmx.attacks.stop import StopRule
    from pyvlmx.models import load_model

    model = load_model("open_clip:pyvlmx-tiny-vit", seed=0, device="cuda")
    x = torch.rand(6, 3, 32, 32, device="cuda")
    t = torch.nn.functional.normalize(torch.randn(6, model.embed_dim, device="cuda"), dim=1)
    atk = EmbeddingAlignment(model, eps=EPS, max_steps=1000, cos_threshold=1.0, precision="bf16")
    atk._precision = atk.make_precision(x.device)
    stop = StopRule("cosine", t, None, None, 0.0, 1.0)  # never met: nobody leaves
    parts = atk.parts(Objective("l2", t, seeds=list(range(6))), stop)
    model.check_inputs = False
    for k in (1, 4):  # a read every step (its one copy into pinned memory), or every 4th
        loop = SlotLoop(parts, x, JobQueue([Job(i, EPS, EPS / 16, i) for i in range(6)]), 4, "linf", "sign",
                        False, lambda ev, jobs: None, read_every=k)
        for _ in range(4):  # slots filled, warm-up done, the window read
            assert loop.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(k):  # no slot changes in these steps
                assert loop.step()
                assert loop.entered == 0
        finally:
            torch.cuda.set_sync_debug_mode(0)


class _NaNPastModel(VisionLanguageModel):
    """A linear embedding that turns NaN once the first pixel passes 0.8 (where the search may take it)."""

    def __init__(self):
        super().__init__(image_size=16, embed_dim=4, logit_scale=10.0, mean=(0.5,) * 3, std=(0.5,) * 3)
        self.proj = torch.nn.Linear(3 * 256, 4)

    def _encode_image(self, n):
        e = self.proj(n.flatten(1))
        return torch.where((n[:, :1, 0, 0] > 0.6), torch.full_like(e, float("nan")), e)

    def _encode_text(self, texts):
        return torch.randn(len(texts), 4)


@pytest.mark.parametrize("opts", [{}, {"optimizer": "adam", "random_start": True},
                                  {"minimal": "bisect", "eps_schedule": (8 / 255, 32 / 255), "bisect_steps": 2},
                                  {"stop": "steps", "max_steps": 7}, {"quantize": False}])
def test_records_do_not_depend_on_how_often_the_loop_reads(tiny_clip, setup, opts, monkeypatch):
    """Between reads the slots step on; a read replays the window, so every sample leaves at the step,
    with the image, it would have left at when read every step, and fewer reads are made."""
    from pyvlmx.attacks.engine import _HostRead

    x, W, tc = setup
    reads = []
    orig = _HostRead.__call__
    monkeypatch.setattr(_HostRead, "__call__", lambda self, t: reads.append(1) or orig(self, t))
    kw = dict(target_classes=tc, class_weights=W, schedule="continuous", batch_size=3)
    base = EmbeddingAlignment(tiny_clip, **dict(TINY, **opts)).run(x, **kw)
    counts = {1: len(reads)}
    for k in (3, 8):
        reads.clear()
        res = EmbeddingAlignment(tiny_clip, **dict(TINY, read_every=k, **opts)).run(x, **kw)
        counts[k] = len(reads)
        assert _strip(res.records) == _strip(base.records)
        assert torch.equal(res.images, base.images)
    assert counts[8] < counts[3] < counts[1], counts


def test_a_read_window_keeps_non_finite_steps_where_they_happened():
    torch.manual_seed(0)
    model = _NaNPastModel().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(12, 3, 16, 16, generator=g) * 255).round() / 255
    x[:, 0, 0, 0] = torch.linspace(0.70, 0.85, 12)  # some start past 0.8, some cross it on the way
    t = torch.nn.functional.normalize(torch.randn(12, 4, generator=g), dim=1)
    kw = dict(eps=32 / 255, rel_step=1 / 16, max_steps=12, cos_threshold=0.999, errors="record")
    runs = {k: EmbeddingAlignment(model, read_every=k, **kw).run(x, t, schedule="continuous", batch_size=5)
            for k in (1, 4)}
    # NaN losses and cosines: compared as JSON text (NaN != NaN)
    assert json.dumps(_strip(runs[1].records)) == json.dumps(_strip(runs[4].records))
    reasons = [r["reason"] for r in runs[1].records]
    assert "non-finite embedding at step 0" in reasons
    assert any(r.startswith("non-finite embedding at step") and not r.endswith(" 0") for r in reasons), reasons
    assert "step limit" in reasons
    # errors="raise": the same first failure, named at the step it happened
    messages = []
    for k in (1, 4):
        with pytest.raises(RuntimeError, match=r"non-finite embedding \(NaN/Inf\) from the model at step [1-9]") \
                as err:
            EmbeddingAlignment(model, read_every=k, **dict(kw, errors="raise")).run(x, t, schedule="continuous",
                                                                                    batch_size=5)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    with pytest.raises(ValueError, match="read_every must be an integer >= 1, got 0"):
        EmbeddingAlignment(model, read_every=0)
