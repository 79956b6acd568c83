"""Reference numbers from Google's RecSim *interest evolution* environment, random slates.

Runs a uniformly random slate policy (each step: ``slate_size`` distinct indices drawn uniformly
among the ``num_candidates`` current candidates) in RecSim's own
``recsim.environments.interest_evolution.create_environment`` and prints, per configuration
(slate_size k, num_candidates C):

- mean episode length (steps), mean episode return (sum of rewards = clicked watch time,
  ``clicked_watchtime_reward``), clicks per step (total clicks / total steps), watch time per
  click, each with its standard error (episode means: std / sqrt(N); ratios: the ratio
  estimator's delta-method SE over episodes);
- for k > 1, the share of clicks at each slate position (SE: binomial, sqrt(p(1-p)/clicks)).

These are the numbers a re-implementation of the environment (e.g. a batched PyTorch one) should
reproduce within noise under the same policy.

This script runs inside RecSim's own venv and imports only recsim, numpy, gym and the standard
library. The pins that were installed and work (Python 3.11.7):

    python3.11 -m venv .recsim-venv
    PIP_NO_CACHE_DIR=1 .recsim-venv/bin/pip install recsim-no-tf==0.2.3 gym==0.26.2 \\
        numpy==2.4.6 scipy==1.17.1 absl-py==2.5.1 gin-config==0.5.0 six==1.17.0
    # (recsim-no-tf does not declare ``six`` but imports it)
    OMP_NUM_THREADS=1 .recsim-venv/bin/python bench/recsim_reference.py \\
        --episodes 2000 --seed 0 --json recsim_reference.json

Seeding (per configuration, all from ``--seed`` s): ``create_environment`` gets ``seed=s``, which
seeds two ``np.random.RandomState(s)``: the user sampler (interests) and the document sampler
(clusters, qualities). The choice model's sampling (``np.random.choice``) and the interest-update
coin (``np.random.rand``) use numpy's *global* generator, seeded here with ``np.random.seed(s)``.
The slate policy has its own ``np.random.RandomState(s + 1)``. Episodes run one after another in
one environment (each ``reset`` samples the next user and a fresh candidate set).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import numpy as np
import gym
import recsim
from recsim.environments import interest_evolution

CONFIGS = [(1, 10), (2, 10), (10, 10), (2, 50)]  # (slate_size, num_candidates)


def _mean_se(x):
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def _ratio_se(num, den):
    """Ratio estimator sum(num)/sum(den) over episodes and its delta-method standard error."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    n = len(num)
    r = num.sum() / den.sum()
    if n < 2:
        return float(r), float("nan")
    resid = num - r * den
    se = math.sqrt((resid ** 2).sum() / (n * (n - 1))) / den.mean()
    return float(r), float(se)


def run_config(slate_size, num_candidates, episodes, seed):
    env = interest_evolution.create_environment({
        'num_candidates': num_candidates,
        'slate_size': slate_size,
        'resample_documents': True,
        'seed': seed,
    })
    np.random.seed(seed)  # global generator: choice sampling and interest-update coin flips
    policy_rng = np.random.RandomState(seed + 1)

    lengths = np.zeros(episodes, dtype=np.int64)
    returns = np.zeros(episodes)
    clicks = np.zeros(episodes, dtype=np.int64)
    pos_counts = np.zeros(slate_size, dtype=np.int64)
    t0 = time.perf_counter()
    for ep in range(episodes):
        env.reset()
        done = False
        steps = 0
        ret = 0.0
        n_click = 0
        while not done:
            slate = policy_rng.choice(num_candidates, size=slate_size, replace=False)
            obs, reward, done, _ = env.step(slate)
            steps += 1
            ret += float(reward)
            for pos, resp in enumerate(obs['response']):
                if resp['click']:
                    n_click += 1
                    pos_counts[pos] += 1
        lengths[ep] = steps
        returns[ep] = ret
        clicks[ep] = n_click
    seconds = time.perf_counter() - t0

    total_clicks = int(clicks.sum())
    length_mean, length_se = _mean_se(lengths)
    return_mean, return_se = _mean_se(returns)
    cps, cps_se = _ratio_se(clicks, lengths)
    wpc, wpc_se = _ratio_se(returns, clicks)
    shares = pos_counts / max(total_clicks, 1)
    share_se = np.sqrt(shares * (1 - shares) / max(total_clicks, 1))
    return {
        'slate_size': slate_size,
        'num_candidates': num_candidates,
        'episodes': episodes,
        'seed': seed,
        'total_steps': int(lengths.sum()),
        'total_clicks': total_clicks,
        'episode_length_mean': length_mean,
        'episode_length_se': length_se,
        'episode_length_min': int(lengths.min()),
        'episode_length_max': int(lengths.max()),
        'episode_return_mean': return_mean,
        'episode_return_se': return_se,
        'clicks_per_step': cps,
        'clicks_per_step_se': cps_se,
        'watch_time_per_click': wpc,
        'watch_time_per_click_se': wpc_se,
        'click_position_share': shares.tolist(),
        'click_position_share_se': share_se.tolist(),
        'seconds': seconds,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--episodes', type=int, default=2000)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--json', type=str, default=None, help='write the numbers to this path')
    args = ap.parse_args()

    versions = {
        'python': platform.python_version(),
        'numpy': np.__version__,
        'gym': gym.__version__,
        'recsim': getattr(recsim, '__version__', '0.2.3 (recsim-no-tf)'),
    }
    print('versions:', versions, flush=True)
    t_all = time.perf_counter()
    results = []
    for k, c in CONFIGS:
        res = run_config(k, c, args.episodes, args.seed)
        results.append(res)
        print(f'k={k} C={c}: {res["episodes"]} episodes, {res["total_steps"]} steps, '
              f'{res["seconds"]:.1f}s', flush=True)
    total_seconds = time.perf_counter() - t_all

    print()
    print(f'RecSim interest_evolution, uniformly random slates, resample_documents=True, '
          f'seed={args.seed}')
    header = (f'{"k":>3} {"C":>4} {"episodes":>8} | {"ep. length":>17} | {"ep. return":>17} | '
              f'{"clicks/step":>17} | {"watch/click":>17}')
    print(header)
    print('-' * len(header))
    for r in results:
        print(f'{r["slate_size"]:>3} {r["num_candidates"]:>4} {r["episodes"]:>8} | '
              f'{r["episode_length_mean"]:>8.3f} ± {r["episode_length_se"]:<6.3f} | '
              f'{r["episode_return_mean"]:>8.3f} ± {r["episode_return_se"]:<6.3f} | '
              f'{r["clicks_per_step"]:>8.4f} ± {r["clicks_per_step_se"]:<6.4f} | '
              f'{r["watch_time_per_click"]:>8.4f} ± {r["watch_time_per_click_se"]:<6.4f}')
    for r in results:
        if r['slate_size'] > 1:
            print(f'\nclick position share, k={r["slate_size"]} C={r["num_candidates"]} '
                  f'({r["total_clicks"]} clicks):')
            print('  ' + '  '.join(f'{i}: {p:.4f}±{s:.4f}' for i, (p, s) in enumerate(
                zip(r['click_position_share'], r['click_position_share_se']))))
    print(f'\ntotal runtime {total_seconds:.1f}s (one thread)')

    if args.json:
        with open(args.json, 'w') as f:
            json.dump({
                'environment': 'recsim.environments.interest_evolution.create_environment',
                'policy': 'uniformly random slate of distinct candidate indices',
                'resample_documents': True,
                'command': ' '.join([sys.executable] + sys.argv),
                'versions': versions,
                'total_seconds': total_seconds,
                'results': results,
            }, f, indent=2)
        print('wrote', args.json)


if __name__ == '__main__':
    main()
