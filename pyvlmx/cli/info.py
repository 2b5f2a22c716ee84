"""``pyvlmx info`` and ``pyvlmx list-models``."""

from __future__ import annotations

import json
import platform


def environment() -> dict:
    """Versions, build information and devices, as one JSON-able dict."""
    import torch

    import pyvlmx
    from pyvlmx._ext import build_info

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    versions = {"pyvlmx": pyvlmx.__version__, "python": platform.python_version(),
                "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    for mod in ("torchvision", "open_clip", "numpy", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {"versions": versions, "build": build_info(), "devices": devices,
            "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}


def _run_info(args) -> int:
    env = environment()
    if args.json:
        print(json.dumps(env, indent=2))
        return 0
    print("pyvlmx environment")
    for k, v in env["versions"].items():
        print(f"  {k:<13} {v}")
    b = env["build"]
    if b.get("loaded"):
        kind = f"C++ + CUDA {b['cuda_version']} (runtime {b['cuda_runtime']})" if b["with_cuda"] else "C++ only"
        print(f"  extension     pyvlmx._C loaded: {kind}; built against torch {b['torch_version']}, "
              f"{b['compiler']}, OpenMP {'on' if b['openmp'] else 'off'}")
    else:
        print(f"  extension     NOT loaded ({b['error']}); pure-torch reference ops in use")
    print(f"  devices       {', '.join(env['devices'])}")
    print(f"  cpu threads   {env['cpu_threads']}")
    print(f"  platform      {env['platform']}")
    return 0


def _run_list_models(args) -> int:
    from pyvlmx.models import families

    for fam in families().values():
        why = fam.available()
        status = "available" if why is None else f"unavailable: {why}"
        print(f"{fam.name}  [{status}]  needs: {fam.requires}")
        print(f"    {fam.description}")
        if why is None:
            archs = fam.list_archs()
            shown = archs if args.all or len(archs) <= 12 else archs[:12] + [f"... ({len(archs)} in all, --all)"]
            for a in shown:
                print(f"    {fam.name}:{a}" if not a.startswith("...") else f"    {a}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, build information (CPU/CUDA kernels), devices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_info)
    p = sub.add_parser("list-models", help="model families, what each needs, and their names")
    p.add_argument("--all", action="store_true", help="list every architecture")
    p.set_defaults(func=_run_list_models)
