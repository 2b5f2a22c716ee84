"""``pyvlmx spectra``: singular values of the image-embedding Jacobian.

The options of the spectra are the fields of
:class:`~pyvlmx.jacobian.config.SpectraConfig` (``--max-images`` sets the
number of pairs with ``--sweep``).
"""

from __future__ import annotations

from pathlib import Path

from pyvlmx.cli._common import add_command, add_image_args, add_model_args, load_images, model_config, named
from pyvlmx.config import add_dataclass_args, dataclass_from_args
from pyvlmx.jacobian.config import SpectraConfig

_EXCLUDE = ("pairs",)
# per-image mode defaults: the exact spectrum, every singular value
_DEFAULTS = {"method": "exact", "k": None}


def _run(args) -> int:
    from pyvlmx.io import write_json
    from pyvlmx.jacobian import METHODS, compare_spectra, plot_compare_spectra, plot_spectra, relative_error
    from pyvlmx.jacobian import spectrum
    from pyvlmx.systematic.aligned import load_aligned_pairs

    cfg = named(lambda: dataclass_from_args(SpectraConfig, args, exclude=_EXCLUDE,
                                            base=SpectraConfig(**_DEFAULTS)), SpectraConfig)
    if args.sweep and args.max_images == 1:
        raise ValueError("--max-images 1 with --sweep: the original-vs-aligned tests are paired over pairs and "
                         "need at least 2")
    out = Path(args.out)
    model = model_config(args).load()
    if args.sweep:
        orig, al, _, _, recs = load_aligned_pairs(args.sweep, model.image_size, args.max_images)
        r = compare_spectra(model, orig, al, k=cfg.k, method=cfg.method if cfg.method != "all" else "exact",
                            power_iters=cfg.power_iters, oversample=cfg.oversample, jvp_backend=cfg.jvp_backend,
                            names=[str(x["pair_id"]) for x in recs], progress=True)
        write_json(out / "spectra_compare.json", r)
        plot_compare_spectra(r, out / "spectra_compare.png")
        t = r["tests"]
        print(f"effective rank: {t['effective_rank']['direction']}, Wilcoxon p={t['effective_rank']['wilcoxon_p']:.3g}")
        print(f"mean log sv:    {t['mean_log_singular_value']['direction']}, "
              f"Wilcoxon p={t['mean_log_singular_value']['wilcoxon_p']:.3g}")
        return 0
    imgs, _, _, names = load_images(args, model.image_size)
    methods = list(METHODS) if cfg.method == "all" else [cfg.method]
    allres = []
    for i, name in enumerate(names):
        res = []
        for m in methods:
            k = cfg.k if (m != "exact" or cfg.k) else None
            r = spectrum(model, imgs[i], k=k, method=m, power_iters=cfg.power_iters, oversample=cfg.oversample,
                         jvp_backend=cfg.jvp_backend)
            r["image"] = name
            res.append(r)
            print(f"{name} {m:10s} {r['wall_time_s']:7.2f}s  top: "
                  + " ".join(f"{s:.4g}" for s in r["singular_values"][:4]))
        if "exact" in methods:
            ref = res[methods.index("exact")]["singular_values"]
            for r in res:
                r["rel_error_vs_exact"] = relative_error(r["singular_values"][: cfg.k or len(ref)], ref)
        plot_spectra(res, out / f"spectra_{Path(name).stem}.png", labels=methods, title=name)
        allres += res
    write_json(out / "spectra.json", allres)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "spectra", "Jacobian singular values (exact, randomized, krylov, VJP-only, sketches); "
                                    "original vs aligned (--sweep)")
    p.add_argument("--out", required=True, help="output folder (JSON + PNG)")
    add_image_args(p, sweep=True)
    add_model_args(p)
    add_dataclass_args(p.add_argument_group("spectra (pyvlmx.jacobian.SpectraConfig)"), SpectraConfig,
                       exclude=_EXCLUDE, defaults_override=_DEFAULTS)
    p.set_defaults(func=_run)
