"""``pyvlmx noise``: embedding statistics under pixel noise vs the linear theory.

The analysis' options are the fields of :class:`~pyvlmx.noise.config.NoiseConfig`.
"""

from __future__ import annotations

from pathlib import Path

from pyvlmx.cli._common import add_command, add_image_args, add_model_args, load_images, model_config, named
from pyvlmx.config import add_dataclass_args, dataclass_from_args
from pyvlmx.noise.config import MIN_NORMALITY_COPIES, NoiseConfig

_EXCLUDE = ("aligned",)  # the study's option: here, --sweep gives the aligned images


def _run(args) -> int:
    from pyvlmx.io import write_json
    from pyvlmx.noise import accuracy_under_noise, noise_statistics, plot_accuracy, plot_discrepancy, plot_qq
    from pyvlmx.systematic.aligned import load_aligned_pairs

    cfg = named(lambda: dataclass_from_args(NoiseConfig, args, exclude=_EXCLUDE), NoiseConfig)
    if args.accuracy and not args.data:
        raise ValueError("--accuracy needs --data (labelled images)")
    if cfg.n < MIN_NORMALITY_COPIES:
        print(f"note: --n {cfg.n} is below {MIN_NORMALITY_COPIES}: the normality tests and the Q-Q plot need "
              f"that many copies; the Q-Q figure will say 'not enough samples'")
    out = Path(args.out)
    model = model_config(args).load()
    imgs, labels, classnames, names = load_images(args, model.image_size)
    sigmas = list(cfg.sigmas)
    results = []
    for i, name in enumerate(names[: cfg.images]):
        print(f"[noise] {name}: {len(sigmas)} sigmas x {cfg.n} copies")
        r = noise_statistics(model, imgs[i], sigmas, cfg.n, batch_size=cfg.batch_size, clamp=cfg.clamp,
                             seed=cfg.seed, progress=True, linearisation=cfg.linearisation)
        r["image"] = name
        stem = Path(name).stem
        write_json(out / f"noise_{stem}.json", r)
        plot_discrepancy(r, out / f"noise_{stem}_discrepancy.png")
        plot_qq(r, out / f"noise_{stem}_qq.png")
        results.append(r)
        for row in r["per_sigma"]:
            lin = row.get("linearisation")
            rho = f"  rho median={lin['median']:.3g} p90={lin['p90']:.3g}" if lin else ""
            print(f"  sigma={row['sigma'] * 255:8.4f}/255  rel_fro={row['rel_fro']:.4f}  "
                  f"sampling={row['sampling_error']:.4f}  ratio={row['ratio']:6.2f}  "
                  f"{'holds' if row['holds'] else 'BREAKS'}{rho}")
        print(f"  linear up to sigma={r['sigma_linear_max']}, breaks at {r['sigma_breaks']}")
    summary = {"model": model.name, "images": [r["image"] for r in results],
               "sigma_linear_max": [r["sigma_linear_max"] for r in results],
               "sigma_breaks": [r["sigma_breaks"] for r in results]}
    if args.accuracy:
        acc_sigmas = list(cfg.accuracy_sigmas())
        acc = {"clean": accuracy_under_noise(model, imgs, labels, classnames, sigmas=acc_sigmas,
                                             n_copies=cfg.acc_copies, seed=cfg.seed)}
        if args.sweep:
            _, al, lab, tgt, _ = load_aligned_pairs(args.sweep, model.image_size, args.max_images)
            acc["aligned"] = accuracy_under_noise(model, al, lab, classnames, sigmas=acc_sigmas,
                                                  n_copies=cfg.acc_copies, seed=cfg.seed, target_labels=tgt)
        write_json(out / "accuracy_vs_sigma.json", acc)
        plot_accuracy(acc, out / "accuracy_vs_sigma.png")
        summary["accuracy"] = {k: v["accuracy"] for k, v in acc.items()}
    summary["config"] = {k: v for k, v in vars(cfg).items()}
    write_json(out / "summary.json", summary)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "noise", "embedding moments under Gaussian pixel noise vs sigma^2 J J^T; "
                                  "zero-shot accuracy vs sigma")
    p.add_argument("--out", required=True, help="output folder (JSON + PNG)")
    add_image_args(p)
    p.add_argument("--accuracy", action="store_true", help="zero-shot accuracy vs sigma (needs --data)")
    p.add_argument("--sweep", default=None, help="systematic sweep folder: accuracy of its aligned images too")
    add_model_args(p)
    add_dataclass_args(p.add_argument_group("noise analysis (pyvlmx.noise.NoiseConfig)"), NoiseConfig,
                       exclude=_EXCLUDE)
    p.set_defaults(func=_run)
