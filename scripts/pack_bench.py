"""Per-member cost of a training step in a pack against the same configurations trained apart (CPU).

One pack of two configurations of S seeds each (2S members, each with its own data set) against the
two configurations as two separate S-member models, on avae's own training loop (`run_epoch`: the
per-epoch test pass excluded), in alternating pairs, timed as this process's CPU time (one torch
thread, so that the figure is the work done and a loaded machine moves it little). Prints each
pair's ms per member-step and the ratio pack / apart, then the medians.

    PYTHONPATH=. python scripts/pack_bench.py --model vae --seeds 5 --pairs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from avae.training.config import Runtime, make_config
from avae.training.steps import MemberImages, TrainingState, new_state, run_epoch

RUNTIME = Runtime(progress=False, check_every=50)


def epoch_seconds(state: TrainingState, cfg, images) -> float:
    """CPU seconds of one epoch of `state`."""
    started = time.process_time()
    run_epoch(state, cfg, images, RUNTIME)
    return time.process_time() - started


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--model", default="vae")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of each of the two configurations")
    parser.add_argument("--images", type=int, default=1000, help="training images of each data set")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    data = [torch.rand(args.images, 784, generator=generator) for _ in range(2)]  # two "data sets"
    seeds = [tuple(range(args.seeds)), tuple(range(args.seeds, 2 * args.seeds))]
    cfgs = [make_config({"model": args.model, "seeds": s}) for s in seeds]
    steps = args.images // cfgs[0].batch_size
    apart = [new_state(cfg, torch.device("cpu")) for cfg in cfgs]
    pack = new_state(cfgs[0], torch.device("cpu"), seeds=[*seeds[0], *seeds[1]])
    starts = torch.tensor([0] * args.seeds + [args.images] * args.seeds)
    pack_images = MemberImages(torch.cat(data), starts, args.images)
    epoch_seconds(pack, cfgs[0], pack_images)  # warm-up: an epoch each
    for state, cfg, x in zip(apart, cfgs, data, strict=True):
        epoch_seconds(state, cfg, x)
    members_steps = 2 * args.seeds * steps
    ratios, pack_ms, apart_ms = [], [], []
    for pair in range(args.pairs):
        packed = epoch_seconds(pack, cfgs[0], pack_images)
        separate = sum(epoch_seconds(s, c, x) for s, c, x in zip(apart, cfgs, data, strict=True))
        pack_ms.append(1e3 * packed / members_steps)
        apart_ms.append(1e3 * separate / members_steps)
        ratios.append(packed / separate)
        print(
            f"pair {pair + 1}: pack {pack_ms[-1]:.2f} ms/member-step, apart {apart_ms[-1]:.2f}, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"{args.model}, 2 x {args.seeds} seeds, {steps} steps an epoch, CPU time, 1 thread: median pack "
        f"{statistics.median(pack_ms):.2f} ms per member-step, apart {statistics.median(apart_ms):.2f}, "
        f"ratio pack / apart {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
