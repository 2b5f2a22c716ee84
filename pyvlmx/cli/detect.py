"""``pyvlmx detect``: noise-sensitivity detection of aligned images (+ adaptive EOT attacker), or the matrix.

The detector's options are the fields of
:class:`~pyvlmx.detect.config.DetectConfig`; ``--eps`` and ``--steps`` are the
attack's (:class:`~pyvlmx.attacks.AlignmentConfig`) for the images this
command aligns itself (``--data``) and for the adaptive attacker.

With ``--attacks``, ``--detectors`` or ``--adaptive`` the command runs the
detection matrix instead (:func:`pyvlmx.detect.matrix.run_matrix`, options
of :class:`~pyvlmx.detect.config.MatrixConfig`) on ``--data`` (default the
sample photos) and writes ``detect_matrix.json``, ``detect_matrix.md`` and
``detect_matrix.png``.  The options both modes share take the matrix's
defaults there: ``--eps`` (4/255), ``--steps``, ``--seed``, ``--sigma`` and
``--k`` (the noise detector's probe), ``--eot-samples`` and ``--eot-steps``
(the adaptive attackers).
"""

from __future__ import annotations

from pathlib import Path

from pyvlmx.cli._common import (
    add_attack_args, add_command, add_model_args, attack_class, attack_config, load_data, model_config, named,
    only, positive_int,
)
from pyvlmx.config import add_dataclass_args, dataclass_from_args
from pyvlmx.detect.config import DetectConfig, MatrixConfig

_DETECT_EXCLUDE = ("eot_images",)  # every image here
# this command's defaults (the study's are in StudyConfig)
_DETECT_DEFAULTS = {"sigma": 4 / 255, "k": 32, "eot_samples": 8, "eot_steps": 50}
_ATTACK_DEFAULTS = {"eps": 8 / 255, "max_steps": 50}


def _attack_exclude():
    return only(attack_class(), "eps", "max_steps")


# options both modes share: dest -> (MatrixConfig field, the single-detector default)
_SHARED = {"eps": ("eps", _ATTACK_DEFAULTS["eps"]), "max_steps": ("steps", _ATTACK_DEFAULTS["max_steps"]),
           "seed": ("seed", DetectConfig().seed), "sigma": ("noise_sigma", _DETECT_DEFAULTS["sigma"]),
           "k": ("noise_k", _DETECT_DEFAULTS["k"]), "eot_samples": ("adaptive_eot_samples",
                                                                   _DETECT_DEFAULTS["eot_samples"]),
           "eot_steps": ("adaptive_steps", _DETECT_DEFAULTS["eot_steps"])}
_MATRIX_EXCLUDE = tuple(f for f, _ in _SHARED.values())
_MATRIX_SWITCHES = ("attacks", "detectors", "adaptive")   # any of them given: matrix mode


def _show(v) -> str:
    if isinstance(v, float) and 0 < v < 1:
        return f"{v * 255:.3g}/255"
    return str(v)


def _matrix_mode(args) -> bool:
    return any(getattr(args, d) is not None for d in _MATRIX_SWITCHES)


def _fill_shared(args) -> None:
    """Give the shared options left unset the default of the mode the command runs in."""
    matrix = _matrix_mode(args)
    base = MatrixConfig()
    for dest, (fname, single) in _SHARED.items():
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(base, fname) if matrix else single)
    if matrix:
        for dest in _MATRIX_SWITCHES:
            if getattr(args, dest) is None:
                setattr(args, dest, getattr(base, dest))


def _run_matrix(args) -> int:
    import torch

    from pyvlmx.detect.attacks import TORCHATTACKS_VERSION
    from pyvlmx.detect.matrix import matrix_markdown, run_matrix
    from pyvlmx.detect.plots import plot_matrix
    from pyvlmx.info import environment
    from pyvlmx.io import write_json

    if args.sweep or args.clean or args.aligned or args.eot:
        raise ValueError("--attacks/--detectors/--adaptive run the detection matrix on --data; it takes no "
                         "--sweep, --clean, --aligned or --eot (its adaptive attackers are --adaptive)")
    shared = {fname: getattr(args, dest) for dest, (fname, _) in _SHARED.items()}
    cfg = named(lambda: dataclass_from_args(MatrixConfig, args, exclude=_MATRIX_EXCLUDE,
                                            base=MatrixConfig(**shared)), MatrixConfig)  # validated: names first
    out = Path(args.out)
    model = model_config(args).load()
    ds = load_data(args.data or "samples", model.image_size, why="the detection matrix")
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    images = torch.stack([ds[i][0] for i in range(n)])
    labels = [int(ds[i][1]) for i in range(n)]
    res = run_matrix(model, images, labels, list(ds.classnames), attacks=cfg.attacks, detectors=cfg.detectors,
                     adaptive=cfg.adaptive, eps=cfg.eps, steps=cfg.steps, seed=cfg.seed, resamples=cfg.resamples,
                     log=print, config=cfg)
    try:
        import torchattacks
        ta_version = torchattacks.__version__
    except ImportError:
        ta_version = None
    res["environment"] = environment() | {"torchattacks": ta_version, "torchattacks_tested": TORCHATTACKS_VERSION}
    res["data"] = args.data or "samples"
    write_json(out / "detect_matrix.json", res)
    md = matrix_markdown(res)
    (out / "detect_matrix.md").write_text(md)
    plot_matrix(res, out / "detect_matrix.png")
    print(md)
    print(f"[matrix] {res['timing']['total_s']:.0f} s; wrote {out}/detect_matrix.json, .md, .png")
    return 0


def _run(args) -> int:
    _fill_shared(args)
    if _matrix_mode(args):
        return _run_matrix(args)
    import torch

    from pyvlmx.data import load_image
    from pyvlmx.detect import align, evaluate_detector, plot_roc
    from pyvlmx.io import write_json
    from pyvlmx.systematic.aligned import load_aligned_pairs
    from pyvlmx.zeroshot import ZeroShotClassifier

    cfg = named(lambda: dataclass_from_args(DetectConfig, args, exclude=_DETECT_EXCLUDE,
                                            base=DetectConfig(**_DETECT_DEFAULTS)), DetectConfig)
    atk = attack_config(args, exclude=_attack_exclude(), defaults_override=_ATTACK_DEFAULTS)
    if not (args.sweep or (args.clean and args.aligned) or args.data):
        raise ValueError("give --sweep DIR, --clean DIR --aligned DIR, or --data SPEC (aligns itself)")
    out = Path(args.out)
    model = model_config(args).load()
    sigma = cfg.sigma
    targets = None
    if args.sweep:
        clean, aligned, labels, targets, recs = load_aligned_pairs(args.sweep, model.image_size, args.max_images)
        # the sweep's originals may repeat (several targets per image): calibrate on distinct ones
        seen, keep = set(), []
        for i, r in enumerate(recs):
            if r["image_index"] not in seen:
                seen.add(r["image_index"])
                keep.append(i)
        src = clean
        clean = clean[keep]
        classnames = args.classnames or None
        if classnames is None:
            classnames = list(load_data(args.data or "samples", model.image_size, why="detect").classnames)
    elif args.clean and args.aligned:
        cl = load_data(args.clean, model.image_size, why="detect")
        clean = torch.stack([cl[i][0] for i in range(len(cl))])
        aligned = torch.stack([load_image(p, model.image_size)
                               for p in sorted(Path(args.aligned).rglob("*.png"))])
        classnames = list(cl.classnames)
    else:
        ds = load_data(args.data, model.image_size, why="detect --data (it aligns to other classes)")
        n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
        clean = torch.stack([ds[i][0] for i in range(n)])
        labels = [ds[i][1] for i in range(n)]
        classnames = list(ds.classnames)
        clf = ZeroShotClassifier(model, classnames)
        C = len(classnames)
        targets = [(y + 1 + (i % (C - 1))) % C for i, y in enumerate(labels)]
        src = clean
        aligned, info = align(model, clean, clf.weights[targets], eps=atk.eps, steps=atk.max_steps,
                              seed=cfg.seed)
        write_json(out / "alignment.json", info)
    clf = ZeroShotClassifier(model, classnames)
    W = clf.weights
    print(f"[detect] {clean.shape[0]} clean, {aligned.shape[0]} aligned, sigma={sigma * 255:.3g}/255, K={cfg.k}")
    res = evaluate_detector(model, clean, aligned, class_weights=W, sigma=sigma, k=cfg.k, seed=cfg.seed)
    extra = {}
    if args.eot:
        if targets is None:
            raise ValueError("--eot needs target classes (--sweep or --data)")
        adv, info = align(model, src, W[targets], eps=atk.eps, steps=cfg.eot_steps, eot_samples=cfg.eot_samples,
                          sigma=sigma, seed=cfg.seed)
        write_json(out / "eot_alignment.json", info)
        with torch.no_grad():
            pred = clf.predict(adv)[0].tolist()
        eot = evaluate_detector(model, clean, adv, class_weights=W, sigma=sigma, k=cfg.k, seed=cfg.seed + 7)
        eot["attack_success_rate"] = sum(int(p == t) for p, t in zip(pred, targets)) / len(targets)
        eot["attack"] = {k: v for k, v in info.items() if k not in ("cosine", "linf")}
        res["adaptive_eot"] = {k: v for k, v in eot.items() if k not in ("raw_scores", "statistic")}
        extra["adaptive EOT"] = eot
    write_json(out / "detect.json", res)
    write_json(out / "roc.json", {n: e["roc"] for n, e in res["scores"].items()})
    plot_roc(res, out / "roc.png", extra=extra)
    for n, e in res["scores"].items():
        print(f"  {n:16s} AUC={e['auc']:.3f}  TPR@5%FPR={e['tpr_at_fpr_0.05']:.2f}  {e.get('direction', '')}")
    if args.eot:
        e = res["adaptive_eot"]["scores"]["combined"]
        print(f"  adaptive EOT: combined AUC={e['auc']:.3f}, attack success "
              f"{res['adaptive_eot']['attack_success_rate']:.2f}")
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "detect", "noise-sensitivity detector: clean vs aligned images, ROC; adaptive EOT")
    p.add_argument("--out", required=True, help="output folder (JSON + PNG)")
    p.add_argument("--sweep", default=None, help="systematic sweep folder (aligned PNGs + originals)")
    p.add_argument("--clean", default=None, help="ImageFolder of clean images")
    p.add_argument("--aligned", default=None, help="folder of aligned PNGs")
    p.add_argument("--data", default=None, help="'samples' or ImageFolder: align its images here "
                                                "(or, with --sweep, where the class names come from)")
    p.add_argument("--classnames", nargs="+", default=None, help="class names (default: those of --data)")
    p.add_argument("--max-images", type=positive_int("--max-images"), default=None,
                   help="first N images (--data) or N pairs (--sweep) (default: all)")
    p.add_argument("--eot", action="store_true", help="also run the adaptive EOT attacker")
    add_model_args(p)
    add_dataclass_args(p.add_argument_group("detector (pyvlmx.detect.DetectConfig)"), DetectConfig,
                       exclude=_DETECT_EXCLUDE, defaults_override=_DETECT_DEFAULTS)
    add_attack_args(p, exclude=_attack_exclude(), defaults_override=_ATTACK_DEFAULTS)
    add_dataclass_args(p.add_argument_group("detection matrix (pyvlmx.detect.MatrixConfig): with --attacks, "
                                            "--detectors or --adaptive"), MatrixConfig, exclude=_MATRIX_EXCLUDE)
    base = MatrixConfig()
    for action in p._actions:  # the shared options' defaults depend on the mode: filled in by _fill_shared
        if action.dest in _SHARED:
            fname, single = _SHARED[action.dest]
            action.help = (f"{action.help.split(' (default:')[0]} (default: {_show(single)}; in the matrix: "
                           f"{_show(getattr(base, fname))})")
            action.default = None
        elif action.dest in _MATRIX_SWITCHES:
            action.help = action.help.split(" (default:")[0] + (
                " (default: all; giving it runs the matrix)" if action.dest != "adaptive" else " (default: off)")
            action.default = None
    p.set_defaults(func=_run)
