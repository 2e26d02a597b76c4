"""``bitvote data pack`` and ``bitvote data info``: CIFAR as one file that travels (``.bvd``)."""

from __future__ import annotations

import sys

from .args import count, input_file, input_path, output_file


def add_parser(sub):
    p = sub.add_parser("data", help="pack CIFAR into one file (.bvd) that --data reads like a folder")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = dsub.add_parser("pack", help="pack an image folder or cifar-10-batches-py into one .bvd file")
    q.add_argument("src", type=input_path, help="an image folder (train/<class>/*, test/<class>/*) or cifar-10-batches-py "
                               "(or a folder holding it)")
    q.add_argument("--out", required=True, type=output_file, help="the file to write, e.g. cifar10.bvd (written atomically)")
    q.add_argument("--jpeg-quality", type=count(95), default=None,
                   help="official pixels only: re-encode as JPEG at this quality (lossy; at 75 about 2.5x smaller) "
                        "instead of lossless PNG")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(func=_pack)

    q = dsub.add_parser("info", help="check a .bvd file (SHA-256, tables) and print what it holds")
    q.add_argument("file", type=input_file)
    q.set_defaults(func=_info)


def _pack(args):
    from ..data import pack_folder

    r = pack_folder(args.src, args.out, args.jpeg_quality, progress=None if args.quiet else sys.stderr)
    print(f"wrote {args.out}: {r['count']} images (train {r['splits'].get('train', 0)}, test "
          f"{r['splits'].get('test', 0)}), {len(r['classes'])} classes, {r['bytes'] / 1e6:.1f} MB, "
          f"{r['origin']}{' (lossy)' if r['lossy'] else ''}; sha256 {r['digest']}")
    return 0


def _info(args):
    from ..datapack import read_meta

    m = read_meta(args.file)
    print(f"{args.file}: {m['count']} images (train {m['splits']['train']}, test {m['splits']['test']}), "
          f"{len(m['classes'])} classes, {m['bytes'] / 1e6:.1f} MB, {m['origin']}{' (lossy)' if m['lossy'] else ''}")
    print(f"classes: {', '.join(m['classes'])}")
    print(f"sha256 {m['digest']} (checked)")
    return 0
