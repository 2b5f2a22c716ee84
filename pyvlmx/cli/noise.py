"""``pyvlmx noise``: embedding statistics under pixel noise vs the linear theory."""

from __future__ import annotations

from pathlib import Path

from pyvlmx.noise._cli_common import (
    DEFAULT_SIGMAS, add_image_args, add_model_args, load_images, load_model_from_args, parse_sigma, write_json,
)


def _run(args) -> int:
    from pyvlmx.noise import accuracy_under_noise, noise_statistics, plot_accuracy, plot_discrepancy, plot_qq

    out = Path(args.out)
    model = load_model_from_args(args)
    imgs, labels, classnames, names = load_images(args, model.image_size)
    sigmas = [parse_sigma(s) for s in args.sigmas] if args.sigmas else DEFAULT_SIGMAS
    results = []
    for i, name in enumerate(names[: args.stats_images]):
        print(f"[noise] {name}: {len(sigmas)} sigmas x {args.n} copies")
        r = noise_statistics(model, imgs[i], sigmas, args.n, batch_size=args.batch_size, clamp=args.clamp,
                             seed=args.seed, progress=True)
        r["image"] = name
        stem = Path(name).stem
        write_json(r, out / f"noise_{stem}.json")
        plot_discrepancy(r, out / f"noise_{stem}_discrepancy.png")
        plot_qq(r, out / f"noise_{stem}_qq.png")
        results.append(r)
        for row in r["per_sigma"]:
            print(f"  sigma={row['sigma'] * 255:8.4f}/255  rel_fro={row['rel_fro']:.4f}  "
                  f"sampling={row['sampling_error']:.4f}  ratio={row['ratio']:6.2f}  "
                  f"{'holds' if row['holds'] else 'BREAKS'}")
        print(f"  linear up to sigma={r['sigma_linear_max']}, breaks at {r['sigma_breaks']}")
    summary = {"model": model.name, "images": [r["image"] for r in results],
               "sigma_linear_max": [r["sigma_linear_max"] for r in results],
               "sigma_breaks": [r["sigma_breaks"] for r in results]}
    if args.accuracy:
        if labels is None:
            raise ValueError("--accuracy needs --data (labelled images)")
        acc_sigmas = [0.0] + sigmas
        acc = {"clean": accuracy_under_noise(model, imgs, labels, classnames, sigmas=acc_sigmas,
                                             n_copies=args.copies, seed=args.seed)}
        if args.sweep:
            from pyvlmx.noise._cli_common import load_sweep

            _, al, lab, tgt, recs = load_sweep(args.sweep, model.image_size, args.max_images)
            acc["aligned"] = accuracy_under_noise(model, al, lab, classnames, sigmas=acc_sigmas,
                                                  n_copies=args.copies, seed=args.seed, target_labels=tgt)
        write_json(acc, out / "accuracy_vs_sigma.json")
        plot_accuracy(acc, out / "accuracy_vs_sigma.png")
        summary["accuracy"] = {k: v["accuracy"] for k, v in acc.items()}
    write_json(summary, out / "summary.json")
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("noise", help="embedding moments under Gaussian pixel noise vs sigma^2 J J^T; "
                                     "zero-shot accuracy vs sigma")
    add_model_args(p)
    add_image_args(p)
    p.add_argument("--sigmas", nargs="+", default=None,
                   help="noise levels, floats or k/255 (default: 0.01/255 .. 10/255)")
    p.add_argument("--n", type=int, default=2000, help="noisy copies per sigma (memory independent of n)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--clamp", action="store_true",
                   help="clamp noisy images to [0, 1] (default off: the linear theory has no clamp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats-images", type=int, default=1, help="images the moment analysis runs on")
    p.add_argument("--accuracy", action="store_true", help="zero-shot accuracy vs sigma (needs --data)")
    p.add_argument("--copies", type=int, default=16, help="noisy copies per image for --accuracy")
    p.add_argument("--sweep", default=None, help="systematic sweep folder: accuracy of its aligned images too")
    p.set_defaults(func=_run)
