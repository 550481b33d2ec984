"""`python -m dda.cli ...`: the `dda` command (as `python -m dda`)."""

from . import app

if __name__ == "__main__":
    app()
