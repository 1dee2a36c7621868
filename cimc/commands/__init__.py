"""One module per `cimc` subcommand, each with `add_parser(subparsers)` and `run(args) -> int`."""
COMMANDS = ("targets", "count", "compile", "run", "estimate", "report", "insitu", "tune", "sweep", "device")
