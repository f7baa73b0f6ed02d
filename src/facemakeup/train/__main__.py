"""``python -m facemakeup.train ...`` / ``accelerate launch -m facemakeup.train ...``: the ``facemakeup train`` command."""

import sys

from ..cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="facemakeup train")
