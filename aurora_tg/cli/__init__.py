"""The command lines: one module per `aurora` command, sharing one error wrapper (cli/errors.py)."""
