#!/usr/bin/env python
"""Run a grid of training runs: ``python launch/sweep.py --grid configs/grids/NAME.yaml``.

Cells run one after another on this machine (K workers each via torchrun), finished cells
are skipped and unfinished ones resume; ``RUNS_ROOT/NAME/sweep.json`` lists every cell and
its status. ``--dry-run`` lists the cells (last line: ``N cells``); ``--cell-index I`` runs
only cell I (0-based; one Slurm array task per cell); ``--shard I/N`` runs cells I, I+N, ...
so that N sweeps share one machine (on CPU give each ``OMP_NUM_THREADS`` = cores / N). The
grid format is described in ``dreg_dist/sweep/grid.py`` and ``docs/results/README.md``.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dreg_dist.sweep.grid import GridError, check_cells, expand_grid, load_grid  # noqa: E402
from dreg_dist.sweep.runner import SweepRunner  # noqa: E402


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise GridError(f"--shard must look like I/N (e.g. 0/2), got '{text}'") from None
    if not 0 <= i < n:
        raise GridError(f"--shard {text}: need 0 <= I < N")
    return i, n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the cells of a grid of training runs, one after another.")
    parser.add_argument("--grid", required=True, help="grid YAML (see configs/grids/)")
    parser.add_argument("--runs-root", default="runs", help="run folders go to RUNS_ROOT/<grid name>/<cell> (default: runs)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="workers per cell (torchrun when > 1; default 1)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their status; run nothing")
    parser.add_argument("--cell-index", type=int, default=None, help="run only this cell (0-based, as --dry-run lists)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="run only the cells whose index is I modulo N, to run N sweeps side by side "
                             "(e.g. one per CPU core with OMP_NUM_THREADS=1, or one per GPU)")
    parser.add_argument("--retry-diverged", action="store_true",
                        help="launch cells whose run stopped on a non-finite value again (skipped by default: "
                             "a resume replays the same steps)")
    parser.add_argument("--cell-args", action="store_true",
                        help="with --cell-index: print the cell's config, run dir and overrides, one per line, "
                             "and run nothing (used by launch/slurm/sweep.sbatch)")
    args = parser.parse_args(argv)
    try:
        if args.nproc_per_node < 1:
            raise GridError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
        grid = load_grid(args.grid)
        cells = expand_grid(grid)
        if not cells:
            raise GridError(f"grid '{args.grid}' has no cells (every combination excluded?)")
        if args.cell_index is not None and not 0 <= args.cell_index < len(cells):
            raise GridError(f"--cell-index {args.cell_index} is out of range: the grid has {len(cells)} cells "
                            f"(0..{len(cells) - 1})")
        check_cells(grid, cells)
        shard = parse_shard(args.shard) if args.shard is not None else None
        if shard is not None and args.cell_index is not None:
            raise GridError("use either --shard or --cell-index, not both")
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runner = SweepRunner(grid, cells, args.runs_root, args.nproc_per_node,
                         argv=[os.path.relpath(sys.argv[0]) if sys.argv[0] else "launch/sweep.py",
                               *(argv if argv is not None else sys.argv[1:])])
    if args.cell_args:
        if args.cell_index is None:
            print("error: --cell-args needs --cell-index", file=sys.stderr)
            return 2
        state = runner.states[args.cell_index]
        print("\n".join([grid.config, str(state.run_dir), *state.cell.overrides]))
        return 0
    if args.dry_run:
        runner.dry_run(args.cell_index)
        return 0
    return runner.run(args.cell_index, shard, retry_diverged=args.retry_diverged)


if __name__ == "__main__":
    sys.exit(main())
