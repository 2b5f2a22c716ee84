"""The detection matrix: torchattacks wrapper, baseline detectors, adaptive attackers, the result's schema."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from _analysis_models import LinearVLM
from pyvlmx import stats
from pyvlmx.detect.adaptive import DetectorAwareAlignment, adaptive_attack
from pyvlmx.detect.attacks import VARIANTS, AttackContext, run_attack
from pyvlmx.detect.baselines import (NoiseDetector, TTCDetector, bit_depth, median_filter, squeeze_scores,
                                     ttc_tau)
from pyvlmx.detect.classifier import ZeroShotLogits
from pyvlmx.detect.config import MATRIX_ATTACKS, MATRIX_DETECTORS, MatrixConfig
from pyvlmx.detect.matrix import CELL_KEYS, crossfit, image_targets, matrix_markdown, run_matrix, text_targets
from pyvlmx.detect.plots import plot_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["cat", "dog", "car", "ship", "bird"]


def _images(n, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.rand(n, 3, size, size, generator=g) * 255) / 255


def _is_8bit(x):
    return torch.allclose(x * 255, torch.round(x * 255), atol=1e-4)


# ---------------------------------------------------------------------------- the torchattacks wrapper

def test_zero_shot_logits_match_the_classifier_and_pass_gradients_to_pixels(tiny_clip):
    W = tiny_clip.class_embeddings(NAMES)
    net = ZeroShotLogits(tiny_clip, W)
    x = _images(3).requires_grad_(True)
    out = net(x)
    emb = torch.nn.functional.normalize(tiny_clip.encode_image(x.detach()), dim=-1)
    assert torch.allclose(out, tiny_clip.logit_scale * emb @ W.t(), atol=1e-5)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"class_weights of shape \(C, 32\), got \(5, 7\)"):
        ZeroShotLogits(tiny_clip, torch.zeros(5, 7))


class _Recording(ZeroShotLogits):
    """Records the range of every input an attack feeds the classifier."""

    lo, hi = float("inf"), -float("inf")

    def forward(self, pixels):
        self.lo = min(self.lo, float(pixels.detach().min()))
        self.hi = max(self.hi, float(pixels.detach().max()))
        return super().forward(pixels)


@pytest.mark.parametrize("name", ["PGD", "APGD", "APGDT"])
def test_torchattacks_feed_and_return_pixels_in_the_unit_box(tiny_clip, name):
    ta = pytest.importorskip("torchattacks")
    W = tiny_clip.class_embeddings(NAMES)
    net = _Recording(tiny_clip, W)
    x = _images(4)
    x[:, :, :4] = 0.0                                          # pixels on the box's faces
    x[:, :, -4:] = 1.0
    x0 = x.clone()
    kw = {"PGD": {"alpha": 2 / 255, "steps": 3}, "APGD": {"steps": 3}, "APGDT": {"steps": 3, "n_classes": 3}}[name]
    atk = getattr(ta, name)(net, eps=8 / 255, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adv = atk(x, net.predict(x))
    assert torch.equal(x, x0)                                  # the input is not modified
    assert 0.0 <= net.lo and net.hi <= 1.0                     # every iterate torchattacks evaluated
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_targeted_pgd_reaches_its_target_within_budget(tiny_clip):
    pytest.importorskip("torchattacks")
    W = tiny_clip.class_embeddings(NAMES)
    x = _images(6)
    labels = ZeroShotLogits(tiny_clip, W).predict(x).tolist()
    targets = [(y + 1 + i) % 5 for i, y in enumerate(labels)]
    targets = [t if t != y else (t + 1) % 5 for t, y in zip(targets, labels)]
    ctx = AttackContext(tiny_clip, W, x, labels, targets, [1, 0, 3, 2, 5, 4], eps=16 / 255, steps=20)
    rows = {r.name: r for r in run_attack("pgd", ctx)}
    assert list(rows) == list(VARIANTS["pgd"])
    t = rows["pgd-targeted"]
    assert t.targets == targets
    assert ZeroShotLogits(tiny_clip, W).predict(t.images).tolist() == targets
    for r in rows.values():
        assert (r.images - x).abs().max() <= 16 / 255 + 1e-6 and _is_8bit(r.images)
        assert r.images.min() >= 0 and r.images.max() <= 1
    # torchattacks draws from the global generator: the matrix seeds it and leaves the caller's state alone
    state = torch.random.get_rng_state()
    again = run_attack("pgd", ctx)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(again[0].images, rows["pgd-untargeted"].images)


def test_noise_controls_keep_the_budget_and_the_8_bit_grid(tiny_clip):
    W = tiny_clip.class_embeddings(NAMES)
    x = _images(4)
    ctx = AttackContext(tiny_clip, W, x, [0, 1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 0], eps=4 / 255, steps=1)
    rows = run_attack("noise", ctx)
    assert [r.name for r in rows] == ["noise-gaussian", "noise-uniform"]
    for r in rows:
        d = r.images - x
        assert d.abs().max() <= 4 / 255 + 1e-6 and _is_8bit(r.images) and (d != 0).float().mean() > 0.3
    # uniform noise reaches the edge of the ball on some pixels; the Gaussian (std eps/2) rarely saturates
    assert ((rows[1].images - x).abs() > 3.5 / 255).float().mean() > ((rows[0].images - x).abs() > 3.5 / 255
                                                                        ).float().mean()


# ---------------------------------------------------------------------------- the baselines

def test_ttc_tau_equals_the_hand_computation_on_a_linear_model():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 3 * 8 * 8, generator=g) / 8
    b = torch.randn(6, generator=g)
    m = LinearVLM(A, image_size=8, bias=b).eval()
    x = 0.25 + 0.5 * torch.rand(3, 3, 8, 8, generator=g)       # x + d never leaves [0, 1]
    eps, seed = 4 / 255, 11
    for draws in (1, 3):
        tau = ttc_tau(m, x, eps=eps, draws=draws, seed=seed)
        for i in range(3):
            gen = torch.Generator().manual_seed(seed + i)
            d = [torch.empty(3, 8, 8).uniform_(-eps, eps, generator=gen) for _ in range(draws)]
            f0 = A.double() @ x[i].flatten().double() + b.double()
            hand = np.mean([float((A.double() @ dj.flatten().double()).norm() / f0.norm()) for dj in d])
            assert tau[i] == pytest.approx(hand, rel=1e-5)
    det = TTCDetector(m, eps=eps, seed=seed)
    raw = det.raw(x)
    assert np.array_equal(det.statistics({}, raw)["score"], -raw["tau"])   # small tau = attacked
    assert np.array_equal(det.flagged(raw), raw["tau"] < 0.2)
    feats = m.encode_image(x, normalize=False)
    assert np.allclose(det.raw(x, features=feats)["tau"], raw["tau"])


def test_median_filter_matches_scipy_and_bit_depth_rounds():
    x = np.random.default_rng(0).random((2, 3, 9, 7))
    x[0, 0, :4, :4] = 0.5                                      # ties
    for k in (2, 3, 4):
        ref = ndimage.median_filter(x, size=(1, 1, k, k), mode="reflect")
        assert np.array_equal(median_filter(torch.from_numpy(x), k).numpy(), ref)
    v = torch.tensor([0.0, 0.2, 0.5, 0.99], requires_grad=True)
    q = bit_depth(v, 5, straight_through=True)
    assert torch.allclose(q, torch.round(v.detach() * 31) / 31)
    q.sum().backward()
    assert torch.equal(v.grad, torch.ones(4))                  # BPDA: the rounding passes the gradient through
    with pytest.raises(ValueError, match="bits must be an integer in \\[1, 8\\], got 9"):
        bit_depth(v, 9)


def test_feature_squeezing_is_zero_on_an_image_the_squeezers_leave_unchanged(tiny_clip):
    W = tiny_clip.class_embeddings(NAMES)
    const = torch.full((2, 3, 32, 32), 7 / 31)
    const[1] = 20 / 31                                         # 5-bit values; constant, so the median keeps them
    assert torch.equal(bit_depth(const, 5), const) and torch.equal(median_filter(const, 2), const)
    s = squeeze_scores(tiny_clip, const, W)
    assert set(s) == {"bit_depth_5", "median_2x2", "max"}
    assert np.array_equal(s["max"], np.zeros(2))
    busy = squeeze_scores(tiny_clip, _images(3), W)
    assert (busy["max"] > 0).all() and np.array_equal(busy["max"], np.maximum(busy["bit_depth_5"],
                                                                             busy["median_2x2"]))


def test_crossfit_calibrates_each_fold_on_the_other_folds_only(tiny_clip):
    class MeanShift(NoiseDetector):
        def __init__(self):
            pass

        def statistics(self, calibration, raw):
            return {"score": raw["s"] - calibration["s"].mean()}

    clean = {"s": np.array([1.0, 10.0, 2.0, 20.0, 3.0, 30.0])}       # fold 0: 1, 2, 3; fold 1: 10, 20, 30
    st = crossfit(MeanShift(), clean, clean, np.arange(6), 2)["score"]
    assert np.allclose(st, [1 - 20, 10 - 2, 2 - 20, 20 - 2, 3 - 20, 30 - 2])
    att = crossfit(MeanShift(), clean, {"s": np.array([5.0, 5.0])}, np.array([3, 4]), 2)["score"]
    assert np.allclose(att, [5 - 2, 5 - 20])                  # image 3 is in fold 1, image 4 in fold 0


# ---------------------------------------------------------------------------- adaptive attackers

def test_detector_aware_alignment_with_zero_weight_is_the_plain_alignment(tiny_clip):
    from pyvlmx.attacks import EmbeddingAlignment

    W = tiny_clip.class_embeddings(NAMES)
    x = _images(3)
    opts = {"eps": 8 / 255, "max_steps": 5, "stop": "steps", "step_size": 2 / 255, "seed": 3}
    plain = EmbeddingAlignment(tiny_clip, **opts).run(x, target_classes=[1, 2, 3], class_weights=W)
    calls = []

    def penalty(z, emb, feats, idx):
        calls.append(z.shape[0])
        return emb[:, 0] ** 2

    aware = DetectorAwareAlignment(tiny_clip, penalty, penalty_weight=0.0, **opts).run(
        x, target_classes=[1, 2, 3], class_weights=W)
    assert calls and torch.equal(aware.images, plain.images)
    pushed = DetectorAwareAlignment(tiny_clip, penalty, penalty_weight=50.0, **opts).run(
        x, target_classes=[1, 2, 3], class_weights=W)
    assert (pushed.embeddings[:, 0] ** 2).sum() < (plain.embeddings[:, 0] ** 2).sum()


def test_gated_penalty_acts_only_on_images_already_in_their_target_class():
    from pyvlmx.attacks.objective import Objective
    from pyvlmx.detect.adaptive import PenalisedObjective

    W = torch.eye(3, 4)
    base = Objective("l2", W[[1, 2]], class_weights=W, target_classes=torch.tensor([1, 2]))
    obj = PenalisedObjective(base, lambda z, e, f, i: torch.ones(e.shape[0]), 1.0, model=None, gated=True)
    emb = torch.stack([W[1], W[0]])                            # row 0 is in its target class, row 1 is not
    assert obj._gate(emb, torch.tensor([0, 1])).tolist() == [1.0, 0.0]
    z = torch.zeros(2, 3, 2, 2)
    total = obj.total(None, z, emb, torch.tensor([0, 1]), torch.tensor([0, 1]), 0)
    assert float(total) == pytest.approx(float(base.rows(emb, torch.tensor([0, 1])).sum()) + 1.0)
    ungated = PenalisedObjective(base, lambda z, e, f, i: torch.ones(e.shape[0]), 1.0, model=None)
    assert float(ungated.total(None, z, emb, torch.tensor([0, 1]), torch.tensor([0, 1]), 0)) == pytest.approx(
        float(total) + 1.0)


def test_bpda_attacker_lowers_the_squeezing_score(tiny_clip):
    W = tiny_clip.class_embeddings(NAMES)
    x = _images(6)
    raw = squeeze_scores(tiny_clip, x, W)
    targets = [2, 3, 4, 0, 2, 3]
    plain, _ = adaptive_attack("squeeze", tiny_clip, x, targets, W, clean_raw=raw, eps=8 / 255, steps=10,
                               penalty_weight=0.0)
    aware, cfg = adaptive_attack("squeeze", tiny_clip, x, targets, W, clean_raw=raw, eps=8 / 255, steps=10,
                                 penalty_weight=10.0)
    assert cfg["eot_samples"] == 0 and cfg["gradient"].startswith("BPDA")
    assert squeeze_scores(tiny_clip, aware, W)["max"].mean() < squeeze_scores(tiny_clip, plain, W)["max"].mean()
    assert (aware - x).abs().max() <= 8 / 255 + 1e-6 and _is_8bit(aware)
    with pytest.raises(ValueError, match="unknown detector 'magnet'"):
        adaptive_attack("magnet", tiny_clip, x, targets, W, clean_raw=raw, eps=8 / 255, steps=1)


# ---------------------------------------------------------------------------- the matrix

@pytest.fixture(scope="module")
def matrix(tiny_clip):
    x = _images(8, seed=1)
    labels = [0, 1, 2, 3, 4, 0, 1, 2]
    return run_matrix(tiny_clip, x, labels, NAMES, attacks=["noise", "alignment-text"],
                      detectors=["noise", "ttc", "squeeze"], adaptive=True, steps=2, resamples=1000,
                      config=MatrixConfig(noise_k=4, align_steps=3, adaptive_images=4, adaptive_steps=2,
                                                       adaptive_eot_samples=1))


def test_matrix_schema_and_cells_recompute_from_the_stored_scores(matrix):
    json.dumps(matrix)
    rows = ["noise-gaussian", "noise-uniform", "alignment-text", "adaptive-noise", "adaptive-ttc", "adaptive-squeeze"]
    assert matrix["rows"] == rows
    assert [(c["attack"], c["detector"]) for c in matrix["cells"]] == [(r, d) for r in rows
                                                                        for d in ("noise", "ttc", "squeeze")]
    for c in matrix["cells"]:
        assert set(CELL_KEYS) <= set(c)
        neg = matrix["scores"]["clean"][c["detector"]]
        pos = matrix["scores"]["attacked"][c["attack"]][c["detector"]]
        assert c["auc"] == stats.auc(neg, pos)
        assert c["tpr_at_5fpr"] == stats.tpr_at_fpr(neg, pos, 0.05)
        assert c["n_clean"] == len(neg) == 8 and c["n_attacked"] == len(pos)
        assert 0 <= c["auc_ci"][0] <= c["auc_ci"][1] <= 1 and 0 <= c["tpr_ci"][0] <= c["tpr_ci"][1] <= 1
        info = matrix["attacks"][c["attack"]]
        assert c["attack_success"] == np.mean(info["success"])
        assert list(c["attack_success_ci"]) == list(stats.wilson_interval(sum(info["success"]), len(pos)))
        assert c["adaptive"] == c["attack"].startswith("adaptive-")
    adaptive = {c["attack"]: c for c in matrix["cells"] if c["adaptive"]}
    assert {c["adaptive_for"] for c in adaptive.values()} == {"noise", "ttc", "squeeze"}
    assert all(c["n_attacked"] == 4 for c in adaptive.values())
    assert matrix["scores"]["index"]["adaptive-ttc"] == [0, 1, 2, 3]
    # the interval is a paired bootstrap over the images, as stats computes it
    c = matrix["cells"][0]
    neg, pos = matrix["scores"]["clean"]["noise"], matrix["scores"]["attacked"]["noise-gaussian"]["noise"]
    assert c["auc_ci"] == list(stats.paired_bootstrap(stats.auc, neg, pos, neg_groups=np.arange(8),
                                                      pos_groups=np.arange(8), resamples=1000, seed=0))
    for name in ("noise-gaussian", "alignment-text"):
        assert matrix["attacks"][name]["linf_max"] <= 4 / 255 + 1e-6
    ttc = next(c for c in matrix["cells"] if c["detector"] == "ttc")
    assert ttc["at_published_threshold"]["threshold"] == 0.2
    noise = next(c for c in matrix["cells"] if c["detector"] == "noise")
    assert set(noise["scores"]) == {"flip_rate", "displacement", "confidence_drop", "kl", "margin"}


def test_matrix_clean_scores_do_not_depend_on_the_attacks(tiny_clip, matrix):
    other = run_matrix(tiny_clip, _images(8, seed=1), [0, 1, 2, 3, 4, 0, 1, 2], NAMES, attacks=["noise"],
                       detectors=["noise", "ttc", "squeeze"], resamples=1000, config=MatrixConfig(noise_k=4))
    assert other["scores"]["clean"] == matrix["scores"]["clean"]
    assert other["scores"]["attacked"]["noise-uniform"] == matrix["scores"]["attacked"]["noise-uniform"]


def test_matrix_markdown_and_heat_map_show_every_cell(matrix, tmp_path):
    md = matrix_markdown(matrix)
    for c in matrix["cells"]:
        assert f"{c['auc']:.2f} [{c['auc_ci'][0]:.2f}, {c['auc_ci'][1]:.2f}]" in md
    assert "| adaptive-ttc (adaptive vs ttc) | 4 |" in md
    fig = plot_matrix(matrix, tmp_path / "m.png")
    assert (tmp_path / "m.png").is_file()
    ax = fig.axes[0]
    shown = np.asarray(ax.get_images()[0].get_array())
    expect = [[next(c["auc"] for c in matrix["cells"] if c["attack"] == r and c["detector"] == d)
               for d in matrix["detectors_order"]] for r in matrix["rows"]]
    assert np.allclose(shown, expect)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == len(matrix["cells"])
    c = matrix["cells"][4]                                     # row 1, column 1
    assert texts[4] == f"{c['auc']:.2f}\n[{c['auc_ci'][0]:.2f}, {c['auc_ci'][1]:.2f}]"


def test_matrix_targets_never_the_true_class():
    labels = [0, 0, 1, 2, 2, 1]
    assert all(t != y for t, y in zip(text_targets(labels, 3), labels))
    assert all(labels[j] != y for j, y in zip(image_targets(labels), labels))
    with pytest.raises(ValueError, match="at least 2 classes"):
        image_targets([1, 1, 1])


def test_unknown_names_list_the_known_ones_before_any_work():
    # a model that is not one: the name check must come first
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['fgsm'\]; attacks: \['alignment-image', "
                                         r"'alignment-text', 'pgd', 'apgd', 'noise'\]"):
        run_matrix(object(), None, [], [], attacks=["pgd", "fgsm"])
    with pytest.raises(ValueError, match=r"unknown detector\(s\) \['lid'\]; detectors: \['noise', 'ttc', "
                                         r"'squeeze'\]"):
        run_matrix(object(), None, [], [], detectors=["lid"])
    with pytest.raises(ValueError, match=r"attacks listed twice: \['pgd'\]"):
        MatrixConfig(attacks=("pgd", "pgd")).validate()
    with pytest.raises(ValueError, match="resamples must be an integer >= 1000, got 200"):
        MatrixConfig(resamples=200).validate()
    assert MatrixConfig().attacks == MATRIX_ATTACKS and MatrixConfig().detectors == MATRIX_DETECTORS
