"""The top layer: one module per `clipkd` command, each a thin orchestration of library calls (argparse ->
explicit arguments -> build/engine/library). Nothing in clipkd imports this package but ``clipkd.cli``."""
