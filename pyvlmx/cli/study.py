"""``pyvlmx study``: zero-shot, sweep, noise, spectra, detection and a report, in one run."""

from __future__ import annotations

from fractions import Fraction


def _pixels(text: str) -> float:
    """'4/255' or '0.0157' -> float."""
    return float(Fraction(text)) if "/" in text else float(text)


def _run(args) -> int:
    from pyvlmx.study import StudyConfig, run_study

    cfg = StudyConfig()
    for name in ("model", "pretrained", "data", "device", "batch_size", "max_steps", "noise_n", "noise_images",
                 "spectra_pairs", "spectra_k", "spectra_method", "detect_k", "eot_images", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.targets is not None:
        cfg.targets = args.targets if args.targets == "all" else int(args.targets)
    if args.eps is not None:
        cfg.eps = _pixels(args.eps)
    if args.noise_sigmas is not None:
        cfg.noise_sigmas = tuple(_pixels(s) for s in args.noise_sigmas)
    cfg.bf16 = bool(args.bf16)
    cfg.noise_aligned = bool(args.noise_aligned)
    run_study(cfg, args.out, progress=not args.no_progress)
    return 0


def register(sub) -> None:
    p = sub.add_parser("study", help="the whole study: zero-shot, systematic sweep, noise, spectra, detection, "
                                     "report.html (resumable)")
    p.add_argument("--model", help="registry name (default: the offline default model)")
    p.add_argument("--pretrained", help="pretrained tag or checkpoint file")
    p.add_argument("--data", help="'samples' (default) or an ImageFolder directory")
    p.add_argument("--out", default="runs/study", help="output folder (resumed if it exists)")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--targets", help="target classes per image: a number K (default 3, sampled per image) or 'all'")
    p.add_argument("--eps", help="L-inf budget in pixels, e.g. 4/255")
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the encoder (CUDA)")
    p.add_argument("--noise-n", dest="noise_n", type=int, help="noisy copies per sigma")
    p.add_argument("--noise-images", dest="noise_images", type=int)
    p.add_argument("--noise-aligned", action="store_true",
                   help="run the covariance analysis on aligned images too (doubles its cost)")
    p.add_argument("--noise-sigmas", dest="noise_sigmas", nargs="+", help="e.g. 0.1/255 1/255 4/255")
    p.add_argument("--spectra-pairs", dest="spectra_pairs", type=int)
    p.add_argument("--spectra-k", dest="spectra_k", type=int)
    p.add_argument("--spectra-method", dest="spectra_method",
                   choices=["exact", "randomized", "krylov", "vjp", "streaming"])
    p.add_argument("--detect-k", dest="detect_k", type=int)
    p.add_argument("--eot-images", dest="eot_images", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)
