"""The ``slimkit`` command: a thin layer over the library, one module per sub-command.

Each command is a module of this package (``slimkit.cli.train`` for ``slimkit train``) with
``add_arguments(parser)`` and ``run(args) -> int``; its docstring's first line is the help text.
Heavy imports happen inside ``run``; the work itself is the library's.

Bad input, unreadable or unsafe files, unusable output paths and running out of memory end the
command with one line on stderr and exit code 2 (130 after Ctrl-C); ``--debug`` (or SLIMKIT_DEBUG=1)
shows the traceback instead.
"""
import argparse
import importlib
import os
import sys

from slimkit.errors import SlimkitError

COMMANDS = {name: f"slimkit.cli.{name}" for name in ("demo", "profile", "train", "compress", "search")}
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def build_parser():
    parser = argparse.ArgumentParser(prog="slimkit", description=__doc__.splitlines()[0])
    from slimkit import __version__

    parser.add_argument("--version", action="version", version=f"slimkit {__version__}")
    parser.add_argument("--debug", dest="_debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)  # every command ships: an import error is a bug
        doc = (module.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        module.add_arguments(p)
        # Also accepted after the command; SUPPRESS keeps a top-level --debug from being reset.
        p.add_argument("--debug", dest="_debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
        p.set_defaults(_run=module.run)
    return parser


def _out_of_memory(err):
    # torch's CPU allocator raises RuntimeError, CUDA raises torch.OutOfMemoryError (a RuntimeError).
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and (
        "can't allocate memory" in str(err) or type(err).__name__ == "OutOfMemoryError"))


def error_line(err) -> str:
    """The one line the CLI prints for ``err`` (multi-line messages keep their help lines below it)."""
    if _out_of_memory(err):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"out of memory ({first}); use smaller inputs or batch sizes"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename!r}" if err.filename else err.strerror
    return str(err) or type(err).__name__


def _handled(err):
    return isinstance(err, (SlimkitError, ValueError, OSError)) or _out_of_memory(err)


def debugging(args) -> bool:
    """``--debug`` or SLIMKIT_DEBUG=1: errors keep their traceback instead of becoming one line."""
    return bool(getattr(args, "_debug", False)) or os.environ.get("SLIMKIT_DEBUG", "") not in ("", "0")


def print_error(command, err) -> None:
    print(f"slimkit {command}: error: {error_line(err)}", file=sys.stderr, flush=True)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_ERROR
    debug = debugging(args)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"slimkit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - only the kinds _handled accepts become one line
        if debug or not _handled(err):
            raise
        print_error(args.command, err)
        return EXIT_ERROR
