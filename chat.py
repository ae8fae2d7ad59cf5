"""Talk to a trained Aurora model: `python chat.py` opens a chat with the newest model train.py wrote (the same
command as `aurora chat`, aurora_tg/cli/chat.py)."""
import sys
from aurora_tg.cli.chat import main

if __name__ == "__main__": sys.exit(main(prog="chat.py"))
