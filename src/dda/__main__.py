"""`python -m dda ...` is the `dda` command; torchrun and accelerate launch it as `-m dda`."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="dda")
