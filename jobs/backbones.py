"""`h2t backbones`: registered backbones, their weights source and tapped layers."""
from __future__ import annotations

import argparse
import json

from head2toe.backbones import BACKBONES, get_spec


def _describe(name: str) -> dict:
    import timm

    spec = get_spec(name)
    model = timm.create_model(spec.timm_id, pretrained=False)
    taps = list(spec.tap_sets[spec.default_taps](model))
    return {
        "name": name, "timm_id": spec.timm_id, "weights_source": spec.weights_source, "note": spec.note,
        "input_size": spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
        "taps": spec.default_taps, "tap_sets": list(spec.tap_sets), "n_layers": len(taps), "layers": taps,
    }


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list on stdout")


def main(args: argparse.Namespace) -> int:
    rows = [_describe(n) for n in BACKBONES]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['name']:<20} timm={r['timm_id']:<34} input={r['input_size']}  layers={r['n_layers']:<3} weights: {r['weights_source']}")
        print(f"{'':<20} taps ({r['taps']}; also {', '.join(t for t in r['tap_sets'] if t != r['taps']) or '-'}): "
              f"{', '.join(r['layers'][:4])}, ..., {', '.join(r['layers'][-3:])}")
        if r["note"]:
            print(f"{'':<20} {r['note']}")
    print("\nAny other timm model name or tag works too (resnet/vit get these tap sets, others their feature_info stages).")
    return 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.backbones"))
