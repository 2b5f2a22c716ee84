"""The attack engine's parts, each against what it must compute.

The loop itself is pinned by ``test_engine_regression.py`` and the attack
invariants by ``test_attacks.py``; here each part is checked on its own:
the EOT objective against the same expectation written out by hand, the
margin loss against the class gap, Adam's per-sample state against
separate runs, the registry listing and the refusals.
"""

import pytest
import torch

from pyvlmx.attacks import (EOTAlignment, attack_options, class_gap, create_attack, list_attacks,
                            quantize_to_budget, record_success, targeted_success)
from pyvlmx.attacks.objective import Objective, _mix
from pyvlmx.attacks.steps import AdamStep, make_step_rule
from pyvlmx.noise.copies import draw_noise


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny shapes: one thread is fastest."""


def test_eot_objective_is_the_expectation_over_its_noise(tiny_clip):
    torch.manual_seed(0)
    z = torch.rand(3, 3, 32, 32, requires_grad=True)
    t = torch.nn.functional.normalize(torch.randn(3, tiny_clip.embed_dim), dim=1)
    seeds = [11, 12, 13]
    obj = Objective("l2", t, eot_samples=4, eot_sigma=2 / 255, eot_noise="uniform", seeds=seeds)
    emb = tiny_clip.encode_image(z)
    rows = torch.tensor([0, 2])
    gidx = torch.tensor([0, 1, 2])
    got = obj.total(tiny_clip.encode_image, z, emb, gidx, rows, step=5)
    want = 0.5 * (emb[rows] - t[rows]).pow(2).sum()
    for r in rows.tolist():
        g = torch.Generator().manual_seed(_mix(seeds[r], 5))
        noise = draw_noise((4, 3, 32, 32), 2 / 255, kind="uniform", generator=g)
        fn = tiny_clip.encode_image((z[r][None] + noise).clamp(0, 1))
        want = want + 0.5 * (fn - t[r]).pow(2).sum() / 4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # a different step draws different noise
    other = obj.total(tiny_clip.encode_image, z, emb, gidx, rows, step=6)
    assert abs(float((other - got).detach())) > 0


def test_margin_loss_is_minus_the_class_gap(tiny_clip):
    W = torch.nn.functional.normalize(torch.randn(4, tiny_clip.embed_dim), dim=1)
    e = torch.nn.functional.normalize(torch.randn(5, tiny_clip.embed_dim), dim=1)
    tc = torch.tensor([0, 1, 2, 3, 0])
    obj = Objective("margin", W[tc], class_weights=W, target_classes=tc)
    idx = torch.arange(5)
    torch.testing.assert_close(obj.rows(e, idx), -class_gap(e, W, tc))
    # by hand for row 0
    s = e[0] @ W.t()
    assert float(obj.rows(e[:1], idx[:1])) == pytest.approx(float(s[1:].max() - s[0]), abs=1e-6)
    assert targeted_success(e, W, tc).tolist() == ((e @ W.t()).argmax(1) == tc).tolist()
    with pytest.raises(ValueError, match="margin.*needs class_weights"):
        Objective("margin", W[tc])


def test_margin_loss_attack_reaches_the_target_class(tiny_clip):
    torch.manual_seed(1)
    x = quantize_to_budget(torch.rand(4, 3, 32, 32))
    W = tiny_clip.class_embeddings(["zebra", "xylophone", "kettle"], ("a photo of a {}.",))
    with torch.no_grad():
        pred = (tiny_clip.encode_image(x) @ W.t()).argmax(1)
    tc = (pred + 1) % 3
    res = create_attack("align", tiny_clip, loss="margin", eps=32 / 255, rel_step=1 / 16, max_steps=80).run(
        x, target_classes=tc, class_weights=W)
    assert bool(res.success.all()), [r["reason"] for r in res.records]
    assert [r["pred_after"] for r in res.records] == tc.tolist()
    assert all(record_success(r) for r in res.records)
    # the recorded loss is the margin loss of the result
    assert all(r["loss"] == pytest.approx(-r["margin_after"], abs=1e-5) for r in res.records)


def test_adam_state_is_per_slot():
    """Slots 0 and 2 step twice, slot 1 is taken by a new sample after one step: each slot's
    direction is that of a fresh Adam run on its own sample's gradients."""
    torch.manual_seed(0)
    g1, g2, g3 = (torch.randn(3, 5) for _ in range(3))
    slots = AdamStep()
    slots.init(torch.zeros(3, 5))
    slots.direction(g1)
    slots.reset([1])                                # a new sample takes slot 1 at step 0
    d = slots.direction(torch.stack([g2[0], g3[1], g2[2]]), [0, 1, 2])
    for row, seq in ((0, (g1[0], g2[0])), (1, (g3[1],)), (2, (g1[2], g2[2]))):
        alone = AdamStep()
        alone.init(torch.zeros(1, 5))
        for g in seq:
            last = alone.direction(g[None])
        torch.testing.assert_close(d[row], last[0])
    # a step of some slots leaves the others' state alone
    before = slots.m.clone(), slots.v.clone()
    slots.direction(g3[:1], [2])
    torch.testing.assert_close(slots.m[:2], before[0][:2])
    torch.testing.assert_close(slots.v[:2], before[1][:2])
    assert slots.count == [2, 1, 3]


def test_step_rules_and_their_projected_step_modes():
    assert make_step_rule("sign").step_kind("linf") == "sign"
    assert make_step_rule("sign").step_kind("l2") == "l2"
    assert make_step_rule("gd").step_kind("linf") == "raw"
    assert make_step_rule("adam").step_kind("l2") == "raw"
    with pytest.raises(ValueError, match="unknown step rule 'rmsprop'; step rules: .*adam"):
        make_step_rule("rmsprop")


def test_eot_attack_is_registered_with_its_options(tiny_clip):
    assert {"embedding-alignment", "eot-alignment"} <= set(list_attacks())
    opts = {o["name"]: o for o in attack_options("eot-alignment")}
    assert opts["eot_samples"]["default"] == 4 and opts["stop"]["default"] == "steps"
    assert all(o["help"] for o in attack_options("embedding-alignment"))
    atk = create_attack("adaptive", tiny_clip, max_steps=3)
    assert isinstance(atk, EOTAlignment) and atk.config.eot_samples == 4
    with pytest.raises(ValueError, match="fixed_jacobian.*takes no EOT"):
        create_attack("eot-alignment", tiny_clip, gradient="fixed_jacobian").run(
            torch.rand(1, 3, 32, 32), torch.nn.functional.normalize(torch.randn(1, tiny_clip.embed_dim), dim=1))
    with pytest.raises(ValueError, match=r"L-inf eps above 1 .*got 4 \(did you mean 4/255\?\)"):
        create_attack("align", tiny_clip, eps=4.0)
    with pytest.raises(ValueError, match=r"L-inf eps above 1 .*got 1.17647$"):
        create_attack("align", tiny_clip, eps=300 / 255)


def test_eot_result_does_not_depend_on_the_batch(tiny_clip):
    torch.manual_seed(2)
    x = quantize_to_budget(torch.rand(3, 3, 32, 32))
    t = torch.nn.functional.normalize(torch.randn(3, tiny_clip.embed_dim), dim=1)
    atk = create_attack("eot-alignment", tiny_clip, eps=16 / 255, max_steps=4, eot_samples=2)
    full = atk.run(x, t, seeds=[7, 8, 9])
    one = atk.run(x[1:2], t[1:2], seeds=[8])
    torch.testing.assert_close(one.images[0], full.images[1], atol=1 / 255 + 1e-6, rtol=0)
    assert float((full.images - x).abs().max()) <= 16 / 255 + 1e-6
