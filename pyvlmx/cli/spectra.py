"""``pyvlmx spectra``: singular values of the image-embedding Jacobian."""

from __future__ import annotations

from pathlib import Path

from pyvlmx.noise._cli_common import add_model_args, load_model_from_args, write_json


def _run(args) -> int:
    from pyvlmx.jacobian import compare_spectra, plot_compare_spectra, plot_spectra, relative_error, spectrum

    out = Path(args.out)
    model = load_model_from_args(args)
    if args.sweep:
        from pyvlmx.noise._cli_common import load_sweep

        orig, al, _, _, recs = load_sweep(args.sweep, model.image_size, args.max_images)
        r = compare_spectra(model, orig, al, k=args.k, method=args.method if args.method != "all" else "exact",
                            names=[str(x["pair_id"]) for x in recs], progress=True)
        write_json(r, out / "spectra_compare.json")
        plot_compare_spectra(r, out / "spectra_compare.png")
        t = r["tests"]
        print(f"effective rank: {t['effective_rank']['direction']}, Wilcoxon p={t['effective_rank']['wilcoxon_p']:.3g}")
        print(f"mean log sv:    {t['mean_log_singular_value']['direction']}, "
              f"Wilcoxon p={t['mean_log_singular_value']['wilcoxon_p']:.3g}")
        return 0
    from pyvlmx.noise._cli_common import load_images

    imgs, _, _, names = load_images(args, model.image_size)
    methods = ["exact", "randomized", "krylov", "vjp", "streaming"] if args.method == "all" else [args.method]
    allres = []
    for i, name in enumerate(names):
        res = []
        for m in methods:
            k = args.k if (m != "exact" or args.k) else None
            r = spectrum(model, imgs[i], k=k, method=m, power_iters=args.power_iters, oversample=args.oversample)
            r["image"] = name
            res.append(r)
            print(f"{name} {m:10s} {r['wall_time_s']:7.2f}s  top: "
                  + " ".join(f"{s:.4g}" for s in r["singular_values"][:4]))
        if "exact" in methods:
            ref = res[methods.index("exact")]["singular_values"]
            for r in res:
                r["rel_error_vs_exact"] = relative_error(r["singular_values"][: args.k or len(ref)], ref)
        plot_spectra(res, out / f"spectra_{Path(name).stem}.png", labels=methods, title=name)
        allres += res
    write_json(allres, out / "spectra.json")
    print(f"wrote {out}")
    return 0


def register(sub) -> None:

    p = sub.add_parser("spectra", help="Jacobian singular values (exact, randomized, VJP-only, streaming); "
                                       "original vs aligned (--sweep)")
    add_model_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--image", nargs="+", help="image file(s)")
    g.add_argument("--data", help="'samples' or an ImageFolder directory")
    g.add_argument("--sweep", help="systematic sweep folder: compare originals vs aligned images")
    p.add_argument("--max-images", type=int, default=None,
                   help="first N images (--data), or N pairs spread over the images (--sweep)")
    p.add_argument("--k", type=int, default=None, help="singular values (needed unless --method exact)")
    p.add_argument("--method", default="exact",
                   choices=["exact", "randomized", "krylov", "vjp", "streaming", "all"])
    p.add_argument("--power-iters", type=int, default=2, help="power (randomized) or Krylov (krylov) iterations")
    p.add_argument("--oversample", type=int, default=10)
    p.set_defaults(func=_run)
