"""The ``slimkit`` command: a thin layer over the library, one module per sub-command.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; its docstring's
first line is the help text. Heavy imports happen inside ``run``.
"""
import argparse
import importlib
import sys

from slimkit.errors import SlimkitError

COMMANDS = {
    "demo": "slimkit.demo",
    "profile": "slimkit.profile._cli",
    "train": "slimkit.train._cli",
    "compress": "slimkit.compress._cli",
    "search": "slimkit.nas._cli",
}


def build_parser():
    parser = argparse.ArgumentParser(prog="slimkit", description=__doc__.splitlines()[0])
    from slimkit import __version__

    parser.add_argument("--version", action="version", version=f"slimkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # command not built yet
        doc = (module.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (SlimkitError, ValueError, FileNotFoundError) as err:
        # Bad input is reported as one clear line, not a traceback.
        print(f"slimkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
