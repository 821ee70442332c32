"""The ``adir`` command line: one entry point, one module per command.

Each command lives in ``jobs/<module>.py`` exposing ``configure_parser(parser)`` and
``main(args) -> int`` (the process exit code). Modules are imported only when their
command runs, so ``adir --help`` stays fast and a broken optional dependency of one
command cannot take the others down.

Exit codes shared by every command: 0 success, 1 crash, 2 usage or configuration error
(detected before any work starts), 3 completed with failed rows.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from restore_core.errors import AdirError, ConfigError, InputError, ModelLoadError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "restore": ("jobs.restore.driver", "restore every row of a Parquet manifest on Ray"),
    "make-manifest": ("jobs.restore.manifest", "write a restoration manifest from a folder of images"),
    "demo": ("jobs.demo", "build index, restore held-out photos, write a report (offline)"),
    "build-index": ("jobs.build_index", "embed a corpus on Ray and build a retrieval index"),
    "query-index": ("jobs.query_index", "print the nearest corpus images of one image"),
    "train-prior": ("jobs.train.prior", "train the small pixel-space DDPM prior"),
    "train-embedder": ("jobs.train.embedder", "train the small degradation-robust embedder"),
    "train-indi": ("jobs.train.indi", "train an InDI restorer for one task"),
    "convert-guided-diffusion": ("jobs.convert_guided_diffusion", "OpenAI guided-diffusion .pt -> diffusers folder"),
}

BENCHES: dict[str, tuple[str, str]] = {
    "ablation": ("jobs.bench.ablation", "ADIR Table 6 ablation: gd, ia_y, ia_random, ia_mse, adir"),
    "cost": ("jobs.bench.cost", "paper configuration against the fast preset (P2)"),
    "peers": ("jobs.bench.peers", "our samplers against DDRM / DiffPIR / DPS on the same prior, with adaptation"),
    "pipeline": ("jobs.bench.pipeline", "Ray pipeline scaling and overhead (P3)"),
    "bookkeeping": ("jobs.bench.bookkeeping", "restore bookkeeping at 10k/100k rows: commit, resume scan, reducer"),
    "index": ("jobs.bench.index", "retrieval index speed/recall (P1), embedding build (P4)"),
    "indi": ("jobs.bench.indi", "InDI perception-distortion table over N steps"),
    "inversion": ("jobs.bench.inversion", "SHRED/DIIP diagnostic: DDIM-invert crops and regenerate; SHRED from each start"),
    "diip": ("jobs.bench.diip", "DIIP diagnostic: PSNR-vs-iteration curves per start and learning rate, where its rules stop"),
    "colorize": ("jobs.bench.colorize", "colorize's colour cast per sampler against the ground truth and the prior's own samples"),
    "pair": ("jobs.bench.pair", "two runs of one bench on the same crops (two priors, say), paired image by image"),
    "core": ("jobs.bench.core", "forward / sampling / adaptation timings of a 64² UNet"),
    "gpu": ("jobs.bench.gpu", "paper-scale figures on one GPU: 256² guided-diffusion forward, ADIR rows, faiss, embedding"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adir", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if name in argv:
            importlib.import_module(module_name).configure_parser(p)
    bench = sub.add_parser("bench", help="benchmarks that print tables and write JSON")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench_sub.required = True
    for name, (module_name, help_text) in BENCHES.items():
        p = bench_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if "bench" in argv and name in argv:
            importlib.import_module(module_name).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from jobs.ray_env import quiet_library_noise

    quiet_library_noise()
    module = importlib.import_module(args._module)
    try:
        return int(module.main(args) or 0)
    except (ConfigError, InputError, ModelLoadError) as exc:
        print(f"adir: error: {exc}", file=sys.stderr)
        return 2
    except AdirError as exc:
        print(f"adir: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
