"""`python -m evomerge …` runs the same command line as `evomerge …`."""

from evomerge.cli import app

if __name__ == "__main__":
    app(prog_name="evomerge")
