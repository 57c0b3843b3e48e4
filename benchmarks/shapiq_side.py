"""The shapiq half of bench_sparse.py: runs shapiq's SPEX or ProxySPEX (shapiq 1.8, Python >= 3.12, its own
virtual environment) on a value function served by the kdi_fast process through files.

    python shapiq_side.py --method SPEX --n 32 --budget 1000 --seed 0 --dir EXCHANGE_DIR [--proxy fixed|hpo]

Each call of the game writes EXCHANGE_DIR/req_<k>.npy (coalitions [M, n] bool) and waits for resp_<k>.npy
(values [M] float64), written by bench_sparse.py with kdi_fast's engine. At the end result.json holds the Moebius
(Harsanyi) coefficients the method computed internally (before its conversion to the requested index), the
seconds spent in the method itself (waiting for values excluded) and the masks it asked for.

ProxySPEX's proxy (--proxy): "hpo" is shapiq's default (a LightGBM regressor chosen by a 5-fold grid search over
max_depth {3, 5} x trees {500, 1000} x learning rate {0.01, 0.1}: 40 fits + 1); "fixed" is one point of that grid
(max_depth 5, 500 trees, learning rate 0.1, one thread) fitted once, the cheaper configuration for a CPU.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", choices=("SPEX", "ProxySPEX"), required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--proxy", choices=("fixed", "hpo"), default="fixed", help="ProxySPEX's proxy (docstring)")
    args = p.parse_args()
    exchange = Path(args.dir)
    import shapiq

    captured = {}
    waited = [0.0]
    asked = [0]

    def game(coalitions: np.ndarray) -> np.ndarray:
        k = asked[0]
        asked[0] += 1
        tmp = exchange / f"req_{k}.tmp.npy"
        np.save(tmp, np.asarray(coalitions, dtype=bool))
        os.replace(tmp, exchange / f"req_{k}.npy")
        start = time.perf_counter()
        response = exchange / f"resp_{k}.npy"
        while not response.exists():
            time.sleep(0.02)
        values = np.load(response)
        waited[0] += time.perf_counter() - start
        return values

    base = getattr(shapiq, args.method)

    class Capturing(base):
        """Keeps the Moebius coefficients; skips the conversion to another index (not needed here)."""

        def _process_moebius(self, moebius_transform):
            captured.update({tuple(int(i) for i in k): float(v) for k, v in dict(moebius_transform).items()})
            keys = list(captured)
            self._interaction_lookup = {key: i for i, key in enumerate(keys)}
            return np.array([captured[k] for k in keys], dtype=float)

    options = {}
    if args.method == "ProxySPEX" and args.proxy == "fixed":
        from lightgbm import LGBMRegressor

        options = {"proxy_model": LGBMRegressor(max_depth=5, n_estimators=500, learning_rate=0.1, n_jobs=1, verbose=-1,
                                                random_state=args.seed), "hpo": False}
    approximator = Capturing(n=args.n, index="FBII", max_order=args.n, random_state=args.seed, **options)
    start = time.perf_counter()
    try:
        approximator.approximate(args.budget, game)
    except Exception as err:  # reported in the result, the benchmark goes on
        (exchange / "result.json").write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        raise
    total = time.perf_counter() - start
    masks = sum(np.load(exchange / f"req_{k}.npy").shape[0] for k in range(asked[0]))
    (exchange / "result.json").write_text(json.dumps({
        "moebius": [[list(k), v] for k, v in captured.items()], "seconds_method": total - waited[0],
        "seconds_waiting": waited[0], "masks": int(masks), "calls": asked[0], "shapiq": shapiq.__version__,
        "proxy": args.proxy if args.method == "ProxySPEX" else None}))


if __name__ == "__main__":
    main()
