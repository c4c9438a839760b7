"""Every subcommand of `inference-agent`, one thin module each: `add_arguments(parser)` and
`run(args) -> int`, the work done by the package that owns it."""
