"""Does ``quasi_random`` cost accuracy? The learnable shape set, the whole recipe, ``random`` vs ``quasi_random``.

    python benchmarks/quasi_learning_check.py [--epochs 4 --resolution 32] [--seeds 0 1 2] [--quasi-pages 10]
                                              [--write-order shuffled|source]

Writes the 10-class shape set of ``recipe_learning_check.py`` once with our writer in ``--page-mib`` pages, in the
writer's default shuffled order (each page mixes classes) or, with ``--write-order source``, class-sorted as
ImageNet's folders are (a page holds samples of one or two classes), then trains the same recipe, epochs and
seeds (weights and data order) in each order and prints the final validation top-1 (raw and EMA weights) per
run and mean +- std per order. What decides whether the order costs accuracy is how many classes a batch mixes;
the header prints it for both orders. At ImageNet's scale (4 ranks, 512 open pages of 27 samples, classes of
1,281) a quasi-random batch of 256 mixes 82% of a uniform batch's classes (184.5 of 225.8); the defaults here
(2 MiB pages: 32 pages of ~12 samples, 10 open) give 85% (8.25 of 9.67 per batch of 32).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from recipe_learning_check import train, write_data  # noqa: E402


def classes_per_batch(data_dir: Path, quasi_pages: int, batch: int) -> tuple[int, float, float]:
    """(pages in train.ffcv, mean distinct classes per batch: random, quasi_random), from the orders themselves."""
    from ffcv.reader import Reader

    from resnet_ffcv.data.quasi_random import QuasiRandomOrder, sample_pages
    from resnet_ffcv.dataset.format import LABEL_FIELD, field_metadata

    reader = Reader(str(data_dir / "train.ffcv"))
    labels, pages = field_metadata(reader, LABEL_FIELD).astype(int), sample_pages(reader)
    n = len(labels)
    quasi = QuasiRandomOrder(pages, np.arange(n), 0, 0, 1, quasi_pages).sample_order(0)
    random = np.random.default_rng(0).permutation(n)

    def mean_classes(order: np.ndarray) -> float:
        cut = len(order) // batch * batch
        return float(np.mean([len(set(row)) for row in labels[order[:cut]].reshape(-1, batch)]))

    return len(np.unique(pages)), mean_classes(random), mean_classes(quasi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quasi-pages", type=int, default=10)
    parser.add_argument("--page-mib", type=int, default=2, help="FFCV page size of the written files (2, 4, 8)")
    parser.add_argument("--write-order", choices=["shuffled", "source"], default="shuffled")
    parser.add_argument("--orders", nargs="+", choices=["random", "quasi_random"], default=["random", "quasi_random"])
    args = parser.parse_args()
    from resnet_ffcv.dataset import writer

    writer.PAGE_SIZE = args.page_mib << 20  # the writer's page (8 MiB for real data); read when it writes
    with tempfile.TemporaryDirectory() as tmp:
        shuffle_splits = ("train",) if args.write_order == "shuffled" else ()
        data_dir = write_data(Path(tmp), args.train_per_class, args.val_per_class, shuffle_splits=shuffle_splits)
        pages, random_classes, quasi_classes = classes_per_batch(data_dir, args.quasi_pages, args.batch_size)
        print(f"{pages} pages; classes per batch: random {random_classes:.1f}, quasi {quasi_classes:.1f}", flush=True)
        results: dict[str, list[tuple[float, float]]] = {order: [] for order in args.orders}
        for seed in args.seeds:
            for order in results:
                start = time.perf_counter()
                rows = train(
                    data_dir,
                    args.epochs,
                    args.resolution,
                    args.batch_size,
                    seed=seed,
                    order=order,
                    quasi_random_pages=args.quasi_pages,
                )
                results[order].append((rows[-1]["val/acc1"], rows[-1]["val/acc1_ema"]))
                print(f"{order} seed {seed}: {results[order][-1]} in {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\ntrain.ffcv ({args.write_order} order): {pages} pages of {args.page_mib} MiB; "
        f"distinct classes per batch of {args.batch_size}: "
        f"random {random_classes:.1f}, "
        f"quasi_random ({args.quasi_pages} pages open) {quasi_classes:.1f}; {args.epochs} epochs, seeds {args.seeds}\n"
    )
    print("| order | " + " | ".join(f"seed {seed} acc1 / EMA" for seed in args.seeds) + " | mean acc1 | mean EMA |")
    print("|---|" + "---:|" * (len(args.seeds) + 2))
    for order, runs in results.items():
        raw, ema = np.array(runs).T
        cells = " | ".join(f"{a:.3f} / {b:.3f}" for a, b in runs)
        print(
            f"| {order} | {cells} | {raw.mean():.3f} +- {raw.std(ddof=1):.3f} "
            f"| {ema.mean():.3f} +- {ema.std(ddof=1):.3f} |"
        )


if __name__ == "__main__":
    main()
