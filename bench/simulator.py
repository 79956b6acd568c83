"""Simulator throughput: user-steps per second against batch size and catalogue size.

Each cell builds an `InterestEvolutionEnv` and steps it through the public TorchRL path a
collector uses, ``env.step_and_maybe_reset`` (``step`` + ``step_mdp`` + partial reset of the
users who finished), with a uniformly random valid-action policy (`uniform_valid_action`,
included in the timing). Prints a markdown table: rows = users, columns = catalogue sizes.

    python bench/simulator.py [--users 1 16 ...] [--items 100 1000 ...] [--seconds 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from tensordict import TensorDictBase

from recrl.envs import InterestEvolutionEnv, uniform_valid_action


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1, 16, 256, 4096, 16384])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 1_000, 10_000, 100_000])
    parser.add_argument("--seconds", type=float, default=1.0, help="time budget per cell")
    parser.add_argument(
        "--steps", type=int, default=None, help="also stop a cell after this many steps"
    )
    parser.add_argument("--history-length", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is faster on a busy machine",
    )
    parser.add_argument(
        "--max-mask-gb",
        type=float,
        default=4.0,
        help="skip cells whose action masks (~3 live [B, N+1] bool tensors) exceed this many GB",
    )
    return parser.parse_args()


def user_steps_per_second(
    num_users: int, num_items: int, args: argparse.Namespace
) -> tuple[float, int]:
    """Throughput of one cell and the number of timed steps."""
    env = InterestEvolutionEnv(
        num_users,
        seed=0,
        device=args.device,
        num_items=num_items,
        history_length=args.history_length,
    )
    gen = torch.Generator(device=env.device).manual_seed(0)
    td = env.reset()

    def step(td: TensorDictBase) -> TensorDictBase:
        td["action"] = uniform_valid_action(td["action_mask"], gen)
        return env.step_and_maybe_reset(td)[1]

    for _ in range(2):  # warm-up: first allocations, lazy spec caches
        td = step(td)
    # On GPU the policy's rejection test syncs every step, so wall time is honest.
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds and (args.steps is None or steps < args.steps):
        td = step(td)
        steps += 1
    return num_users * steps / (time.perf_counter() - start), steps


def fmt(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.2f}M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f}k"
    return f"{rate:.0f}"


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"# user-steps/s, InterestEvolutionEnv, device={args.device}, "
        f"torch threads={torch.get_num_threads()}, {args.seconds:g} s per cell, "
        f"history_length={args.history_length}, random valid-action policy, step_and_maybe_reset\n"
    )
    print("| users \\ items | " + " | ".join(f"{n:,}" for n in args.items) + " |")
    print("|---:|" + "---:|" * len(args.items), flush=True)
    notes = []
    for num_users in args.users:
        cells = []
        for num_items in args.items:
            mask_gb = 3 * num_users * (num_items + 1) / 1e9
            if mask_gb > args.max_mask_gb:
                cells.append("skipped")
                notes.append(
                    f"{num_users} users x {num_items} items skipped: ~{mask_gb:.1f} GB of masks "
                    f"> --max-mask-gb {args.max_mask_gb:g}"
                )
                continue
            rate, steps = user_steps_per_second(num_users, num_items, args)
            cells.append(fmt(rate) if steps >= 3 else f"{fmt(rate)} ({steps} steps)")
        print(f"| {num_users:,} | " + " | ".join(cells) + " |", flush=True)
    print("\n".join(notes))


if __name__ == "__main__":
    main()
