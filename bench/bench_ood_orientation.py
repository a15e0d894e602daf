"""Issue 22 item 2, exploration (not shipped): does "some reorientation of the image is more typical than the image"
catch the flip and rotate proxies?

    python bench/bench_ood_orientation.py --model fashion-cnn-robust

For a calibrated image classifier (28 x 28 inputs) this scores every input ``x`` and its seven images ``g x``
under the other elements of the dihedral group D4 (rotations by 90, 180, 270 degrees, the two mirrors, the two
diagonal reflections) with the card's standardised layer scores ``z_l`` (and the energy's), and forms

    orient(x) = s(x) - min_g s(g x),   s = mean_l z_l (the served ood_score);

``orient-nomirror`` leaves the left-right mirror out of the minimum (mirrored clothes are typical clothes).
``+orient`` adds ``orient``, standardised on the first 5,000 test images, as one more term of the mean.  AUROC /
FPR at 95% TPR against the other 5,000 test images, on the proxies, the strong copy of every shift kind (first
4,000 test images) and rotations by 45, 60 and 135 degrees (first 2,000).  It costs seven more deterministic
passes per input.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

from mcdrop.nets.artifacts import load_artifact
from mcdrop.sampling.engine import MCEngine
from mcdrop.training.calibrate import features
from mcdrop.training.data import load_fashion_mnist
from mcdrop.training.proxies import PROXIES, make_proxy
from mcdrop.training.shifts import KINDS, shifted
from mcdrop.uncertainty.metrics import auroc, fpr_at_95_tpr

D4: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (
    lambda t: torch.rot90(t, 1, (1, 2)), lambda t: torch.rot90(t, 2, (1, 2)), lambda t: torch.rot90(t, 3, (1, 2)),
    lambda t: t.flip(1), lambda t: t.flip(2),  # upside down; the left-right mirror
    lambda t: t.transpose(1, 2), lambda t: torch.rot90(t, 2, (1, 2)).transpose(1, 2))
MIRROR = 4  # the index of the left-right mirror in D4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fashion-cnn-robust")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    artifact = load_artifact(args.model)
    cal, engine = artifact.calibration, MCEngine(artifact.model)
    assert cal is not None and cal.density is not None, "a calibrated classifier is needed"
    density = cal.density

    def z(t: torch.Tensor) -> torch.Tensor:
        return density.layer_scores(features(engine, t.reshape(len(t), -1), cal.feature_layers)).double()

    def raw(x: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        t = torch.as_tensor(x).reshape(-1, 28, 28).float()
        zx = z(t)
        s, sg = zx.mean(1), torch.stack([z(g(t)).mean(1) for g in D4], 1)
        keep = [i for i in range(len(D4)) if i != MIRROR]
        return {"z": zx, "served": s, "orient": s - sg.amin(1), "orient-nomirror": s - sg[:, keep].amin(1)}

    test_x, _ = load_fashion_mnist(None, train=False)
    images = test_x.float() / 255
    clean = raw(images)
    ref, ev = slice(0, 5000), slice(5000, None)

    def scores(d: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        out = {"served": d["served"], "orient": d["orient"]}
        for key in ("orient", "orient-nomirror"):
            zo = (d[key] - clean[key][ref].mean()) / clean[key][ref].std()
            out[f"+{key}"] = (d["z"].sum(1) + zo) / (d["z"].shape[1] + 1)
        return {k: v.numpy() for k, v in out.items()}

    base = {k: v[ev] for k, v in scores(clean).items()}
    sets: dict[str, torch.Tensor | np.ndarray] = {name: make_proxy(name, images.numpy()) for name in PROXIES}
    sets.update({f"{kind} 2": shifted(images[:4000], kind, 2) for kind in KINDS})
    sets.update({f"rotated {d}°": F.rotate(images[:2000].unsqueeze(1), float(d)).squeeze(1) for d in (45, 60, 135)})
    print(f"{args.model}: AUROC / FPR95 against test images 5,000-9,999; {args.threads} threads\n")
    print("| set | " + " | ".join(base) + " |")
    print("|---|" + "---:|" * len(base))
    for name, x in sets.items():
        r = scores(raw(x))
        print(f"| {name} | " + " | ".join(f"{auroc(base[k], r[k]):.3f} / {fpr_at_95_tpr(base[k], r[k]):.3f}"
                                        for k in base) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
