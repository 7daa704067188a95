"""`python -m hrnet_sweep.train key=value ...`: the command every sweep file runs (W&B agents
and the embedded engine alike).

The name is a public contract: sweep files, SLURM scripts and users' own scripts call it,
so it stays here at the top level while the training itself lives in
`hrnet_sweep.pipeline.train`. Errors exit 2 through the CLI, as `hrnet_sweep train` does.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
