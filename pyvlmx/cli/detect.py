"""``pyvlmx detect``: noise-sensitivity detection of aligned images (+ adaptive EOT attacker)."""

from __future__ import annotations

from pathlib import Path

import torch

from pyvlmx.noise._cli_common import add_model_args, load_model_from_args, parse_sigma, write_json


def _run(args) -> int:
    from pyvlmx.data import load_dataset, load_image
    from pyvlmx.detect import align, evaluate_detector, plot_roc
    from pyvlmx.zeroshot import ZeroShotClassifier

    out = Path(args.out)
    model = load_model_from_args(args)
    sigma = parse_sigma(args.sigma)
    if args.sweep:
        from pyvlmx.noise._cli_common import load_sweep

        clean, aligned, labels, targets, recs = load_sweep(args.sweep, model.image_size, args.max_images)
        names = {}
        for r in recs:
            names[int(r["label"])] = r["true_class"]
            names[int(r["target_class"])] = r["target_name"]
        # the sweep's originals may repeat (several targets per image): calibrate on distinct ones
        seen, keep = set(), []
        for i, r in enumerate(recs):
            if r["image_index"] not in seen:
                seen.add(r["image_index"])
                keep.append(i)
        clean = clean[keep]
        classnames = args.classnames or None
        if classnames is None:
            ds = load_dataset(args.data or "samples", model.image_size)
            classnames = list(ds.classnames)
    elif args.clean and args.aligned:
        cl = load_dataset(args.clean, model.image_size)
        clean = torch.stack([cl[i][0] for i in range(len(cl))])
        aligned = torch.stack([load_image(p, model.image_size)
                               for p in sorted(Path(args.aligned).rglob("*.png"))])
        classnames = list(cl.classnames)
        targets = None
    elif args.data:
        ds = load_dataset(args.data, model.image_size)
        n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
        clean = torch.stack([ds[i][0] for i in range(n)])
        labels = [ds[i][1] for i in range(n)]
        classnames = list(ds.classnames)
        clf = ZeroShotClassifier(model, classnames)
        C = len(classnames)
        targets = [(y + 1 + (i % (C - 1))) % C for i, y in enumerate(labels)]
        aligned, info = align(model, clean, clf.weights[targets], eps=args.eps, steps=args.steps, seed=args.seed)
        write_json(info, out / "alignment.json")
    else:
        raise ValueError("give --sweep DIR, --clean DIR --aligned DIR, or --data SPEC (aligns itself)")
    clf = ZeroShotClassifier(model, classnames)
    W = clf.weights
    print(f"[detect] {clean.shape[0]} clean, {aligned.shape[0]} aligned, sigma={sigma * 255:.3g}/255, K={args.k}")
    res = evaluate_detector(model, clean, aligned, class_weights=W, sigma=sigma, k=args.k, seed=args.seed)
    extra = {}
    if args.eot:
        if targets is None:
            raise ValueError("--eot needs target classes (--sweep or --data)")
        src = clean if not args.sweep else load_sweep(args.sweep, model.image_size, args.max_images)[0]
        adv, info = align(model, src, W[targets], eps=args.eps, steps=args.steps, eot_samples=args.eot_samples,
                          sigma=sigma, seed=args.seed)
        write_json(info, out / "eot_alignment.json")
        with torch.no_grad():
            pred = clf.predict(adv)[0].tolist()
        eot = evaluate_detector(model, clean, adv, class_weights=W, sigma=sigma, k=args.k, seed=args.seed + 7)
        eot["attack_success_rate"] = sum(int(p == t) for p, t in zip(pred, targets)) / len(targets)
        eot["attack"] = {k: v for k, v in info.items() if k not in ("cosine", "linf")}
        res["adaptive_eot"] = {k: v for k, v in eot.items() if k != "raw_scores"}
        extra["adaptive EOT"] = eot
    write_json(res, out / "detect.json")
    write_json({n: e["roc"] for n, e in res["scores"].items()}, out / "roc.json")
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
    p = sub.add_parser("detect", help="noise-sensitivity detector: clean vs aligned images, ROC; adaptive EOT")
    add_model_args(p)
    p.add_argument("--sweep", default=None, help="systematic sweep folder (aligned PNGs + originals)")
    p.add_argument("--clean", default=None, help="ImageFolder of clean images")
    p.add_argument("--aligned", default=None, help="folder of aligned PNGs")
    p.add_argument("--data", default=None, help="'samples' or ImageFolder: align its images here "
                                                "(or, with --sweep, where the class names come from)")
    p.add_argument("--classnames", nargs="+", default=None)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--sigma", default="4/255", help="probe noise, float or k/255")
    p.add_argument("--k", type=int, default=32, help="noisy copies per image")
    p.add_argument("--eps", type=float, default=8 / 255, help="L-inf budget of the alignment loops")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eot", action="store_true", help="also run the adaptive EOT attacker")
    p.add_argument("--eot-samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)
