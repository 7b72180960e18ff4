"""Command-line subcommands that belong to no single layer (pull, generate)."""
