"""Seeded sweeps whose per-pair records pin the attack engine's behaviour.

The records in ``tests/data/engine_regression.json`` were written by the
attack engine as it was before its rebuild into parts (objective, step rule,
budget, stop rule, gradient source, one loop); ``test_engine_regression.py``
requires the same per-pair steps, success and PSNR (to 1e-4 dB) today.

Every case runs the seeded tiny open_clip ViT on the 23 sample photos at
32x32, one torch thread, one target class per image.  Regenerate (only when a
change of behaviour is intended, and say so in the commit) with::

    python tests/_regression_cases.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

FIXTURE = Path(__file__).with_name("data") / "engine_regression.json"

BASE = {"eps": 32 / 255, "rel_step": 1 / 16, "max_steps": 40}
# name -> (sweep options, attack options)
CASES: dict[str, tuple[dict, dict]] = {
    "sign-text": ({"targets": 1, "batch_size": 8}, dict(BASE)),
    "sign-image": ({"targets": 1, "batch_size": 8, "target_mode": "image"}, dict(BASE, cos_threshold=0.97)),
    "adam-text": ({"targets": 1, "batch_size": 8}, dict(BASE, optimizer="adam")),
    "gd-text": ({"targets": 1, "batch_size": 8}, dict(BASE, optimizer="gd", step_size=30.0)),
    "l2-random-start": ({"targets": 1, "batch_size": 8, "seed": 5},
                        dict(BASE, norm="l2", eps=3.0, step_size=0.4, random_start=True, quantize=False)),
    "cosine-loss-noquant": ({"targets": 1, "batch_size": 16}, dict(BASE, loss="cosine", quantize=False)),
    "fixed-jacobian": ({"targets": 1, "batch_size": 8}, dict(BASE, gradient="fixed_jacobian")),
    "escalate": ({"targets": 1, "batch_size": 8},
                 dict(BASE, minimal="escalate", eps_schedule=(4 / 255, 16 / 255, 32 / 255), max_steps=30)),
    "bisect": ({"targets": 1, "batch_size": 8},
               dict(BASE, minimal="bisect", eps_schedule=(8 / 255, 32 / 255), bisect_steps=2, max_steps=30)),
    "steps-rule": ({"targets": 1, "batch_size": 8}, dict(BASE, stop="steps", max_steps=6)),
}
KEYS = ("pair_id", "success", "steps", "psnr", "reason", "eps", "pred_after", "total_steps", "rounds")


def setup_model_and_data():
    from pyvlmx.data import load_dataset
    from pyvlmx.models import load_model

    model = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    return model, load_dataset("samples", model.image_size)


def pick(records: list[dict]) -> list[dict]:
    return [{k: r.get(k) for k in KEYS} for r in sorted(records, key=lambda r: r["pair_id"])]


def main() -> int:
    import torch

    from pyvlmx.systematic import run_sweep

    torch.set_num_threads(1)
    model, data = setup_model_and_data()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (sweep, attack) in CASES.items():
            run_sweep(model, data, Path(tmp) / name, progress=False, **sweep, **attack)
            recs = [json.loads(ln) for ln in (Path(tmp) / name / "records.jsonl").read_text().splitlines()]
            out[name] = pick(recs)
            ok = sum(r["success"] for r in out[name])
            print(f"{name}: {ok}/{len(recs)} success", file=sys.stderr)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
