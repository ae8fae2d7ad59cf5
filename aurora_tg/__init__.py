"""Aurora: a compact GPT-2-style language model training stack on tinygrad."""


class UserError(Exception):
  """Bad input from the user: the command line prints the message on one line and exits non-zero."""
