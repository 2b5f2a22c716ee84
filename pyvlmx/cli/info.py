"""``pyvlmx info`` and ``pyvlmx list-models``."""

from __future__ import annotations

from pyvlmx.cli._common import add_command
from pyvlmx.info import environment
from pyvlmx.io import dumps


def _run_info(args) -> int:
    env = environment()
    if args.json:
        print(dumps(env, indent=2))
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


def _run_list_attacks(args) -> int:
    """Every registered attack with its options (the CLI names), defaults and help."""
    import dataclasses

    from pyvlmx.attacks import get_attack_class, list_attacks
    from pyvlmx.config import describe_fields

    for name in list_attacks():
        cls = get_attack_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        print(f"{name}  ({cls.__module__}.{cls.__name__}){': ' + doc[0] if doc else ''}")
        if cls.config_class is None or not dataclasses.is_dataclass(cls.config_class):
            print("    (no options)")
            continue
        for row in describe_fields(cls.config_class):
            print(f"    {row['flags']:<28} default {row['default']:<12} {row['help']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, build information (CPU/CUDA kernels), devices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_info)
    p = sub.add_parser("list-models", help="model families, what each needs, and their names")
    p.add_argument("--all", action="store_true", help="list every architecture")
    p.set_defaults(func=_run_list_models)
    p = add_command(sub, "list-attacks", "registered attacks, each with its options and their defaults")
    p.set_defaults(func=_run_list_attacks)
